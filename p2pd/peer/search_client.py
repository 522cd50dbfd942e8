"""Asking many members a search (docs/protocol.md §4.7, §6 ``search``) under one deadline.

They are asked concurrently, at most MEMBERS_AT_ONCE at a time, each within
its own deadline and all within the caller's; each answer is bounded
(MAX_SEARCH_ANSWER bytes, 100 matches) and checked like a listing before
anything in it is kept.  The connections are made as ``ls`` makes them
(PeerConnection.open: the member's certificate pinned, its id checked) and
closed after the answer: a search of a thousand members keeps no thousand
connections.

Every member asked ends in one of three counts: ``answered`` (a valid
answer), ``refused`` (an error status: not a member there, too many
searches, a query it does not take) or ``silent`` (no valid answer within the
deadline: unreachable, too slow, or an answer that is not one).  Members not
asked when the deadline came make the search ``partial``.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, NamedTuple

import trio
from pydantic import Field, ValidationError

from p2pcommon.models import Member, SharedFile, _Body, validation_reason
from p2pd.peer.client import PeerConnection, PeerRefused, PeerUnavailable
from p2pd.peer.search import MAX_MATCHES, Query
from p2pd.peer.search_groups import group
from p2pd.tls.contexts import members_client_context
from p2pd.tls.identity import Identity

log = logging.getLogger("p2pd.search")

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
#: Matches kept from all members together (~300 bytes each); beyond, the search
#: is partial.  Grouped, they make at most 1000 rows (search_groups) anyway.
MAX_KEPT_MATCHES = 10_000
#: Seconds between progress notifications.
PROGRESS_PERIOD = 0.25


class SearchAnswer(_Body):
    """A member's answer to ``GET /search`` (docs/protocol.md §4.7), checked at the edge."""

    generation: Annotated[int, Field(ge=0)] = 0
    files: Annotated[list[SharedFile], Field(max_length=MAX_MATCHES)]
    more: bool = False


class Match(NamedTuple):
    """What a search keeps of a member's match: what grouping and the user need."""

    path: str
    size: int
    sha256: str
    #: The member's pieces root and piece size (a fetch by sha256 swarms with them).
    root: str | None = None
    piece_size: int | None = None


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
            (
                member.id,
                member.name,
                Match(entry.path, entry.size, entry.sha256, entry.root, entry.piece_size),
            )
            for entry in files[:room]
        ]
        self.dropped += len(files) - len(kept)
        self.found += kept
        self.new += kept

    def take_new(self) -> list[dict[str, Any]]:
        new, self.new = self.new, []
        return [
            {"id": member_id, "name": name, "path": m.path, "size": m.size, "sha256": m.sha256}
            for member_id, name, m in new
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
