"""The scheduler's loop of one many-source round: pieces asked, checked, written.

``p2pd.fetch.swarming`` prepares the round (the root, the piece layer, the
pieces already on disk) and places the file; this module runs the
``p2pd.fetch.swarm`` scheduler against the members, one task per piece in
flight, each under its own cancel scope (a piece the scheduler takes back, a
member dropped or stalled, cancels it).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from p2pcommon.lifecycle import unwrap_group
from p2pcommon.models import Member
from p2pd.fetch.attempts import Retry, fatal_os_error, is_final
from p2pd.fetch.model import State
from p2pd.fetch.piecefile import verify_and_write
from p2pd.fetch.swarm import Request, Swarm
from p2pd.fetch.transfer import Transfer
from p2pd.peer.client import PeerRefused, PeerUnavailable
from p2pd.peer.files import repr_digest
from p2pd.peer.pieces import BadPiece, Pieces, fetch_piece

if TYPE_CHECKING:
    from p2pd.fetch.swarming import Candidate, SwarmContext

log = logging.getLogger("p2pd.downloads")

#: Seconds between the scheduler's looks at stalls and at members that may join.
TICK = 1.0
JOIN_EVERY = 5.0
#: Seconds the look for members that may join may hold up the scheduling (it asks the
#: registry about members whose answer is not kept): past it, the next look.
JOIN_DEADLINE = 0.5


class PieceRun:
    """The scheduler's loop for one round: pieces asked, checked, written."""

    def __init__(
        self, context: SwarmContext, transfer: Transfer, pieces: Pieces, fd: int, done: set[int]
    ) -> None:
        self.context = context
        self.transfer = transfer
        self.pieces = pieces
        self.fd = fd
        self.swarm = Swarm(transfer.queued.size, pieces.piece_size, random.Random(), done)
        self.members: dict[str, Candidate] = {}
        self._scopes: dict[tuple[str, int], trio.CancelScope] = {}
        self._wake = trio.Event()
        self._digest = repr_digest(transfer.queued.sha256)
        transfer.progress.update(self.swarm.bytes_verified, trio.current_time())

    def verified(self) -> set[int]:
        return {i for i in range(self.swarm.count) if self.swarm.is_verified(i)}

    def join(self, candidate: Candidate) -> None:
        member = candidate.member
        queued = self.transfer.queued
        if member.id in self.members or self.context.avoided(queued.sha256, member.id):
            return
        if self.swarm.add_source(member.id, trio.current_time()):
            self.members[member.id] = candidate
            self.transfer.source_entry(member.id, member.name)

    async def until_complete(self, more: Callable[[], Awaitable[list[Candidate]]]) -> None:
        try:
            await self._loop(more)
        except BaseExceptionGroup as group:
            # A piece's task failed (a local write error) and the others were cancelled.
            raise unwrap_group(group) from None

    async def _loop(self, more: Callable[[], Awaitable[list[Candidate]]]) -> None:
        queued = self.transfer.queued
        self.transfer.state = State.DOWNLOADING
        joined_at = trio.current_time()
        async with trio.open_nursery() as nursery:
            while not self.swarm.complete:
                now = trio.current_time()
                if now - joined_at >= JOIN_EVERY:
                    joined_at = now
                    joining: list[Candidate] = []
                    with trio.move_on_after(JOIN_DEADLINE):
                        joining = await more()
                    for candidate in joining:
                        self.join(candidate)
                self._cancel(self.swarm.stalled(now))
                for member_id, candidate in self.members.items():
                    for request in self.swarm.next_requests(member_id, now):
                        scope = trio.CancelScope()
                        self._scopes[(member_id, request.piece)] = scope
                        nursery.start_soon(self._piece, request, candidate, scope)
                self._report()
                if not self.swarm.usable() and not self._scopes:
                    reasons = "; ".join(
                        f"{self.members[s.id].member.name}: {s.reason}"
                        for s in self.swarm.sources()
                        if s.reason
                    )
                    raise Retry(f"every member failed: {reasons or 'none could be asked'}")
                self._wake = trio.Event()
                with trio.move_on_after(TICK):
                    await self._wake.wait()
            nursery.cancel_scope.cancel()
        self._report()
        log.info(
            "transfer %s: every piece of %s verified, from %s",
            queued.id,
            queued.remote_path,
            ", ".join(
                f"{self.members[s.id].member.name} ({s.pieces})" for s in self.swarm.sources()
            ),
        )

    def _cancel(self, requests: list[Request]) -> None:
        for request in requests:
            scope = self._scopes.pop((request.source, request.piece), None)
            if scope is not None:
                scope.cancel()

    async def _piece(self, request: Request, candidate: Candidate, scope: trio.CancelScope) -> None:
        member = candidate.member
        size = self.transfer.queued.size
        try:
            with scope:
                try:
                    data = await fetch_piece(
                        self.context.pool,
                        member,
                        candidate.path,
                        self._digest,
                        size,
                        request.start,
                        request.end,
                    )
                except PeerRefused as exc:
                    if exc.status == 503:  # no upload slot for one more piece: fewer at once
                        self._busy(member, request)
                        return
                    final = is_final(exc.status) or exc.status == 404
                    self._failed(member, str(exc), final=final)
                    return
                except PeerUnavailable as exc:
                    self._failed(member, str(exc), final=False)
                    return
                except BadPiece as exc:
                    self._failed(member, str(exc), final=True)
                    return
                with trio.CancelScope(shield=True):
                    try:
                        ok = await trio.to_thread.run_sync(
                            verify_and_write, self.fd, self.pieces, request.piece, data
                        )
                    except OSError as exc:
                        raise fatal_os_error(exc, self.transfer.dest) from None
                now = trio.current_time()
                self._scopes.pop((member.id, request.piece), None)
                self._cancel(self.swarm.piece_done(member.id, request.piece, ok, len(data), now))
                if ok:
                    self.context.on_received(self.transfer, len(data))
                    self.transfer.progress.update(self.swarm.bytes_verified, now)
                elif not self.transfer.source_entry(member.id, member.name)["liar"]:
                    # Named once: its other pieces in flight may fail too, and are counted.
                    self.context.name_liar(
                        self.transfer,
                        member,
                        f"sent piece {request.piece} of {self.transfer.queued.remote_path}, "
                        "which failed verification",
                    )
        finally:
            if self._scopes.get((member.id, request.piece)) is scope:
                del self._scopes[(member.id, request.piece)]
            self._wake.set()

    def _busy(self, member: Member, request: Request) -> None:
        self._scopes.pop((member.id, request.piece), None)
        self.swarm.source_busy(member.id, request.piece, trio.current_time())

    def _failed(self, member: Member, reason: str, *, final: bool) -> None:
        log.info("transfer %s: %s: %s", self.transfer.queued.id, member.name, reason)
        self._cancel(self.swarm.source_failed(member.id, reason, trio.current_time(), final=final))

    def _report(self) -> None:
        """Each member's part, for ``p2pctl downloads`` and the history."""
        for report in self.swarm.sources():
            member = self.members[report.id].member
            entry: dict[str, Any] = self.transfer.source_entry(member.id, member.name)
            entry.update(
                bytes=report.bytes,
                pieces=report.pieces,
                bad_pieces=report.bad_pieces,
                wasted_bytes=report.wasted_bytes,
                rate=round(report.rate or 0.0),
                state=report.state,
                reason=report.reason,
            )
            entry["liar"] = entry.get("liar", False) or report.liar
