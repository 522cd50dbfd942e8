"""``fetch --sha256``: find who holds the bytes with a search, then fetch from them.

A search by the whole sha256 (p2pd.control.search) names the members that
hold it; the content most of them agree on (sha256 and size) is fetched to
``name``, else to its most common name, directly under download_dir.
``start_from_holders`` is the seam to the transfer: every holder is a
candidate (many sources at once when their listed pieces roots agree, else one
at a time, the others as alternates).
"""

from __future__ import annotations

import random
import re
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from p2pcommon.models import Member, SharedFile
from p2pcommon.paths import UnsafePath
from p2pd.control.jsonrpc import INVALID_PARAMS, OPERATION_FAILED, RpcError
from p2pd.control.search import DEFAULT_TIMEOUT
from p2pd.fetch.downloads import Downloads, NotQueued
from p2pd.fetch.names import destination
from p2pd.fetch.swarm import MAX_SOURCES
from p2pd.fetch.swarming import Candidate
from p2pd.fetch.transfer import Transfer
from p2pd.peer.client import PeerPool
from p2pd.peer.search import build_query
from p2pd.peer.search_client import Tally, ask_members
from p2pd.peer.search_groups import Content, group

_SHA256 = re.compile(r"[0-9a-f]{64}")


def wanted_content(params: dict[str, Any]) -> tuple[str, str]:
    """(sha256, name or "") a ``fetch`` by sha256 asks for; RpcError -32602 otherwise."""
    sha256, name = params.get("sha256"), params.get("name")
    if not isinstance(sha256, str) or _SHA256.fullmatch(sha256.lower()) is None:
        raise RpcError(INVALID_PARAMS, "fetch needs params {'sha256': 64 hex digits}")
    if name is not None and (not isinstance(name, str) or not name or "/" in name):
        raise RpcError(INVALID_PARAMS, "fetch's 'name' is a file name: not empty, no '/'")
    return sha256.lower(), name or ""


async def find_holders(
    pool: PeerPool,
    members_source: Callable[[], Awaitable[list[Member]]],
    sha256: str,
) -> tuple[Content | None, list[Candidate], Tally]:
    """The content most members hold under ``sha256``, those members (each with its path
    and pieces root), and the search's counts; (None, [], counts) when no member answered
    that it has it."""
    tally = Tally()
    deadline = trio.current_time() + DEFAULT_TIMEOUT
    members: list[Member] = []
    with trio.move_on_at(deadline):
        members = await members_source()
    await ask_members(pool.identity, members, build_query(sha256=sha256), deadline, tally)
    found = [(mid, name, entry) for mid, name, entry in tally.found if entry.sha256 == sha256]
    rows = group(found).contents
    if not rows:
        return None, [], tally
    by_id = {member.id: member for member in members}
    content = rows[0]
    pieces = {mid: (m.root, m.piece_size) for mid, _, m in found if m.size == content.size}
    holders = [
        Candidate(by_id[holder.id], holder.path, *pieces.get(holder.id, (None, None)))
        for holder in content.members
    ]
    return content, holders, tally


def destination_name(content: Content, name: str, download_dir: Path) -> str:
    """``name``, else the content's most common name that is safe here; RpcError if none."""
    for candidate in [name] if name else content.names:
        try:
            destination(download_dir, candidate)
        except UnsafePath as exc:
            if name:
                raise RpcError(OPERATION_FAILED, f"refusing --name {name!r}: {exc}") from None
            continue
        return candidate
    raise RpcError(
        OPERATION_FAILED,
        f"the members name {content.sha256[:12]}… only with unsafe names "
        f"({', '.join(repr(n) for n in content.names[:3])}): give one with --name",
    )


async def start_from_holders(
    downloads: Downloads, content: Content, holders: Sequence[Candidate], name: str
) -> Transfer:
    """The transfer of ``content`` from ``holders``: one of them named its source, all of
    them candidates (many sources at once, or alternates one at a time).  NotQueued says
    why it could not start."""
    order = list(holders)
    random.shuffle(order)  # spread many fetches of the same content over its holders
    # A transfer takes pieces from MAX_SOURCES members at most: a random share of them.
    candidates = order[:MAX_SOURCES]
    first = candidates[0]
    entry = SharedFile.model_construct(
        path=first.path,
        size=content.size,
        mtime=0.0,
        sha256=content.sha256,
        root=first.root,
        piece_size=first.piece_size,
    )
    return await downloads.start(first.member, entry, candidates, name=name)


async def start_by_sha256(
    pool: PeerPool,
    members_source: Callable[[], Awaitable[list[Member]]],
    downloads: Downloads,
    download_dir: Path,
    sha256: str,
    name: str,
) -> Transfer:
    """The transfer of the content ``sha256`` from the members found holding it; RpcError
    (operation failed) saying why when none holds it or it cannot start."""
    content, holders, tally = await find_holders(pool, members_source, sha256)
    if content is None:
        raise RpcError(
            OPERATION_FAILED,
            f"no member answered that it has sha256 {sha256}: asked {tally.asked} of "
            f"{tally.members} members ({tally.answered} answered, {tally.silent} silent, "
            f"{tally.refused} refused); `p2pctl search --sha256 {sha256[:12]}` shows who has it",
        )
    name = destination_name(content, name, download_dir)
    try:
        return await start_from_holders(downloads, content, holders, name)
    except (NotQueued, UnsafePath) as exc:
        raise RpcError(OPERATION_FAILED, f"refusing {name!r}: {exc}") from None
