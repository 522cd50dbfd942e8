"""The control method ``search`` (docs/protocol.md §6): whom to ask, and the answer.

The members come from the registry, a page at a time (``members_to_search``:
the one place that enumerates them); p2pd.peer.search_client asks them.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from p2pcommon.memory import release_free_memory
from p2pcommon.models import Member
from p2pd.control.jsonrpc import INVALID_PARAMS, OPERATION_FAILED, RawJson, RpcError
from p2pd.control.server import Notify
from p2pd.membership.directory import Directory, LookupUnavailable
from p2pd.peer.client import PeerPool
from p2pd.peer.search import Query, QueryError, build_query
from p2pd.peer.search_client import Tally, ask_members

#: Seconds a search waits for answers unless the call says otherwise, and at most.
DEFAULT_TIMEOUT = 5.0
MAX_TIMEOUT = 60.0
#: Members asked at most (the registry is paged up to this many).
MAX_MEMBERS = 10_000
MEMBER_PAGE = 1000


async def members_to_search(directory: Directory) -> list[Member]:
    """The other live members, with their certificates: the registry's pages (§3.4),
    through the directory (which keeps what they say for the connections to come).

    The one function that says whom a search asks.  RpcError (operation
    failed) when the registry cannot be read.
    """
    members: list[Member] = []
    try:
        async with contextlib.aclosing(directory.pages(certs=True, limit=MEMBER_PAGE)) as pages:
            async for page in pages:
                members += (m for m in page if m.cert)
                if len(members) >= MAX_MEMBERS:
                    break
    except LookupUnavailable as exc:
        raise RpcError(
            OPERATION_FAILED,
            f"cannot list the members to search: {exc}; check `p2pctl status` (registry) "
            "and try again",
        ) from None
    return members[:MAX_MEMBERS]


async def search_call(
    params: dict[str, Any],
    notify: Notify,
    pool: PeerPool,
    members_source: Callable[[], Awaitable[list[Member]]],
) -> RawJson:
    """The control method ``search``: the final document (docs/protocol.md §6), encoded.

    With ``"progress": true``, "search" notifications carry the counts and the
    matches that arrived since the last one, every PROGRESS_PERIOD seconds.
    """
    try:
        query = query_of(params)
        timeout = search_timeout(params.get("timeout"))
    except (QueryError, ValueError) as exc:
        raise RpcError(INVALID_PARAMS, f"search: {exc}") from None
    deadline = trio.current_time() + timeout
    tally = Tally()

    async def progress() -> None:
        await notify("search", {**tally.counts(), "found": tally.take_new()})

    members = None
    with trio.move_on_at(deadline):
        members = await members_source()
    if members is None:
        tally.cut_short = True  # the registry took the whole deadline
    else:
        wants_progress = params.get("progress") is True
        await ask_members(
            pool.identity, members, query, deadline, tally, progress if wants_progress else None
        )
        del members
    # Encoded here, and the objects dropped before the answer is sent: a thousand
    # connections' buffers and answers, and the document's objects, were freed
    # in pieces, which glibc would keep as the daemon's for as long as it runs.
    encoded = json.dumps(tally.document(), separators=(",", ":")).encode("ascii")
    tally.found.clear()
    gc.collect()
    release_free_memory()
    return RawJson(encoded)


def query_of(params: dict[str, Any]) -> Query:
    """The query a ``search`` call asks for; QueryError naming the parameter at fault."""
    pattern, sha256 = params.get("pattern"), params.get("sha256")
    sizes = {name: params.get(name) for name in ("min_size", "max_size")}
    if pattern is not None and not isinstance(pattern, str):
        raise QueryError("pattern", "must be a string")
    if sha256 is not None and not isinstance(sha256, str):
        raise QueryError("sha256", "must be a string of hex digits")
    for name, size in sizes.items():
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
            raise QueryError(name, "must be a whole number of bytes")
    return build_query(
        q=pattern or None,
        sha256=sha256.lower() if sha256 else None,
        min_size=sizes["min_size"],
        max_size=sizes["max_size"],
    )


def search_timeout(value: object) -> float:
    """The call's ``timeout`` (seconds), checked; ValueError says what is allowed."""
    if value is None:
        return DEFAULT_TIMEOUT
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"timeout must be a number of seconds, up to {MAX_TIMEOUT:g}")
    if not 0 < value <= MAX_TIMEOUT:
        raise ValueError(f"timeout must be above 0 and at most {MAX_TIMEOUT:g} seconds")
    return float(value)
