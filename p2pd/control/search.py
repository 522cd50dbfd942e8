"""Asking every member a search (docs/protocol.md §6 ``search``), under one deadline.

The members come from the registry, a page at a time (``members_to_search``:
the one place that enumerates them).  They are asked concurrently, at most
MEMBERS_AT_ONCE at a time, each within its own deadline and all within the
call's; each answer is bounded (MAX_SEARCH_ANSWER bytes, 100 matches) and
checked like a listing before anything in it is kept.  The connections are
made as ``ls`` makes them (PeerConnection.open: the member's certificate
pinned, its id checked) and closed after the answer: a search of a thousand
members keeps no thousand connections.

Every member asked ends in one of three counts: ``answered`` (a valid
answer), ``refused`` (an error status: not a member there, too many
searches, a query it does not take) or ``silent`` (no valid answer within the
deadline: unreachable, too slow, or an answer that is not one).  Members not
asked when the deadline came make the search ``partial``.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import ssl
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, NamedTuple

import trio
from pydantic import Field, ValidationError

from p2pcommon.memory import release_free_memory
from p2pcommon.models import Member, SharedFile, _Body, validation_reason
from p2pcommon.registry_client import RegistryClient
from p2pd.control.jsonrpc import INVALID_PARAMS, RawJson, RpcError
from p2pd.control.server import Notify
from p2pd.peer.client import PeerConnection, PeerRefused, PeerUnavailable
from p2pd.peer.search import MAX_MATCHES, Query, QueryError, build_query
from p2pd.peer.search_groups import group
from p2pd.tls.contexts import members_client_context
from p2pd.tls.identity import Identity

log = logging.getLogger("p2pd.search")

#: Seconds a search waits for answers unless the call says otherwise, and at most.
DEFAULT_TIMEOUT = 5.0
MAX_TIMEOUT = 60.0
#: Members asked at once: enough to hide round trips, few enough that a thousand
#: TLS handshakes do not crowd out the rest of the daemon.
MEMBERS_AT_ONCE = 64
#: Seconds one member may take (connect, handshake, answer): a silent member
#: holds one of the places above no longer than this.
MEMBER_TIMEOUT = 2.0
#: The largest answer read from one member (100 matches of long paths fit).
MAX_SEARCH_ANSWER = 256 * 1024
#: Bytes each read of an answer may fill: a waiting read holds its buffer, and
#: 64 of 256 KiB (a transfer's) would be 16 MiB for answers of a few KiB.
RECEIVE_SIZE = 16 * 1024
#: Members asked at most (the registry is paged up to this many).
MAX_MEMBERS = 10_000
MEMBER_PAGE = 1000
#: Matches kept from all members together (~300 bytes each); beyond, the search
#: is partial.  Grouped, they make at most 1000 rows (search_groups) anyway.
MAX_KEPT_MATCHES = 10_000
#: Seconds between progress notifications.
PROGRESS_PERIOD = 0.25


async def members_to_search(registry: RegistryClient, own_id: str) -> list[Member]:
    """The other live members, with their certificates: the registry's pages (§3.4).

    The one function that says whom a search asks.  RegistryError when the
    registry cannot be read.
    """
    members: list[Member] = []
    after: str | None = None
    while len(members) < MAX_MEMBERS:
        page, after = await registry.members_page(after, MEMBER_PAGE, certs=True)
        members += (m for m in page if m.id != own_id and m.cert)
        if after is None:
            break
    return members[:MAX_MEMBERS]


class SearchAnswer(_Body):
    """A member's answer to ``GET /search`` (docs/protocol.md §4.6), checked at the edge."""

    generation: Annotated[int, Field(ge=0)] = 0
    files: Annotated[list[SharedFile], Field(max_length=MAX_MATCHES)]
    more: bool = False


class Match(NamedTuple):
    """What a search keeps of a member's match: what grouping and the user need."""

    path: str
    size: int
    sha256: str


@dataclass
class Tally:
    """What a search found so far; ``new`` holds the matches not yet notified."""

    members: int = 0
    asked: int = 0
    answered: int = 0
    refused: int = 0
    #: Members that answered with more matches than they sent.
    more: int = 0
    #: Matches dropped past MAX_KEPT_MATCHES.
    dropped: int = 0
    cut_short: bool = False
    found: list[tuple[str, str, Match]] = field(default_factory=list)
    new: list[tuple[str, str, Match]] = field(default_factory=list)

    @property
    def silent(self) -> int:
        return self.asked - self.answered - self.refused

    @property
    def partial(self) -> bool:
        return self.cut_short or self.asked < self.members or self.dropped > 0

    def counts(self) -> dict[str, Any]:
        return {
            "members": self.members,
            "asked": self.asked,
            "answered": self.answered,
            "silent": self.silent,
            "refused": self.refused,
            "partial": self.partial,
        }

    def keep(self, member: Member, files: Sequence[SharedFile]) -> None:
        room = max(0, MAX_KEPT_MATCHES - len(self.found))
        kept = [
            (member.id, member.name, Match(entry.path, entry.size, entry.sha256))
            for entry in files[:room]
        ]
        self.dropped += len(files) - len(kept)
        self.found += kept
        self.new += kept

    def take_new(self) -> list[dict[str, Any]]:
        new, self.new = self.new, []
        return [
            {"id": member_id, "name": name, **match._asdict()} for member_id, name, match in new
        ]

    def document(self) -> dict[str, Any]:
        """The final answer (DESIGN: ``results`` and the counts)."""
        grouped = group(self.found)
        return {
            "results": [content.to_json() for content in grouped.contents],
            **self.counts(),
            "more": self.more,
            "left_out": grouped.left_out + self.dropped,
        }


async def ask_members(
    identity: Identity,
    members: Sequence[Member],
    query: Query,
    deadline: float,
    tally: Tally,
    on_progress: Callable[[], Awaitable[None]] | None = None,
) -> Tally:
    """Ask ``members`` for ``query`` until each answered or the ``deadline`` (trio time)."""
    tally.members = len(members)
    context, unusable = await trio.to_thread.run_sync(
        members_client_context, identity, [m.cert for m in members]
    )
    skip = set(unusable)
    target = query.target()
    queue: Iterator[Member] = iter(members)

    async def worker() -> None:
        for member in queue:
            tally.asked += 1
            if member.cert in skip:
                continue  # silent: its certificate from the registry is unusable
            with trio.move_on_after(min(MEMBER_TIMEOUT, deadline - trio.current_time())):
                await _ask(context, identity, member, target, tally)

    async def progress() -> None:
        assert on_progress is not None
        while True:
            await trio.sleep(PROGRESS_PERIOD)
            await on_progress()

    with trio.move_on_at(deadline) as scope:
        async with trio.open_nursery() as nursery:
            if on_progress is not None:
                nursery.start_soon(progress)
            async with trio.open_nursery() as workers:
                for _ in range(min(MEMBERS_AT_ONCE, len(members))):
                    workers.start_soon(worker)
            nursery.cancel_scope.cancel()  # every member asked: no more progress
    tally.cut_short = scope.cancelled_caught
    return tally


async def _ask(
    context: ssl.SSLContext, identity: Identity, member: Member, target: str, tally: Tally
) -> None:
    try:
        connection = await PeerConnection.open(identity, member, context, receive_size=RECEIVE_SIZE)
    except PeerUnavailable as exc:
        log.debug("search: %s", exc)
        return
    try:
        head = await connection.request(target)
        body = await connection.body(MAX_SEARCH_ANSWER)
    except PeerUnavailable as exc:
        log.debug("search: %s did not answer: %s", member.name, exc)
        return
    finally:
        await connection.aclose()
    if head.status != 200:
        tally.refused += 1
        log.debug("search: %s", PeerRefused(head.status, f"{member.name} answered {head.status}"))
        return
    try:
        answer = SearchAnswer.model_validate_json(body)
    except ValidationError as exc:
        log.info("search: %s sent an invalid answer: %s", member.name, validation_reason(exc))
        return
    tally.answered += 1
    tally.more += answer.more
    tally.keep(member, answer.files)


async def search_call(
    params: dict[str, Any],
    notify: Notify,
    identity: Identity,
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
            identity, members, query, deadline, tally, progress if wants_progress else None
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
