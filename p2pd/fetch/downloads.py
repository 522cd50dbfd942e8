"""Downloads: resumable, verified, atomic, retried from any member with the same bytes.

A transfer writes into a hidden partial file named by the content's sha256,
resumes it with ``Range`` (rebuilding the hash state from the bytes on disk),
verifies the sha256 of the listing, fsyncs, and links the file into place
under a free name, so that nothing is ever at a final name unverified and no
existing file is overwritten.  Every outcome goes to the history.

This module keeps the transfers (a bounded queue of records, persisted, of
which ``p2pd.fetch.schedule`` starts 8 at a time) and runs their rounds;
``p2pd.fetch.receiving`` makes one attempt from one member.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import trio

from p2pcommon.boundary import contained, describe, failure_boundary
from p2pcommon.models import Member, SharedFile
from p2pcommon.paths import UnsafePath
from p2pd.fetch.attempts import Attempts, Fatal, ProgressWindow, Retry, check_queued
from p2pd.fetch.candidates import Candidates
from p2pd.fetch.history import History
from p2pd.fetch.model import Progress, Queued, State
from p2pd.fetch.names import destination
from p2pd.fetch.partial import existing_copy
from p2pd.fetch.receiving import Receiver, discard_quietly
from p2pd.fetch.schedule import Schedule
from p2pd.fetch.sources import find_alternates
from p2pd.fetch.swarming import Candidate, SwarmContext, swarmable
from p2pd.fetch.transfer import Transfer
from p2pd.membership.directory import Directory, LookupUnavailable
from p2pd.peer.client import PeerPool

__all__ = [
    "MAX_TRANSFERS",
    "DestinationUnreadable",
    "Downloads",
    "NotQueued",
    "QueueFull",
    "Transfer",
]

log = logging.getLogger("p2pd.downloads")

#: Transfers running at once; the others wait their turn in state "queued".
CONCURRENT_TRANSFERS = 8
#: Transfers queued or running at most: a queued one costs about 2 KiB of memory
#: and 0.3 ms to queue (bench/folder_fetch.py), so 10 000 cost ~20 MiB and ~3 s.
#: A listing may hold a million files: a fetch past this is refused whole.
MAX_TRANSFERS = 10_000


class NotQueued(Exception):
    """A transfer could not be queued; the message says why and what to do."""


class QueueFull(NotQueued):
    """No room for another transfer (MAX_TRANSFERS are queued or running)."""


class DestinationUnreadable(NotQueued):
    """The destination could not be looked at (is the file there already?)."""


class Downloads:
    def __init__(
        self,
        pool: PeerPool,
        directory: Directory,
        download_dir: Path,
        history: History,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self._receiver = Receiver(pool, download_dir, self._received)
        self._directory = directory
        #: Many-source transfers (p2pd.fetch.swarming) and the members they avoid.
        self.swarm = SwarmContext(pool, download_dir, on_received=self._piece_received)
        self._candidates = Candidates(pool, directory, self.swarm.avoided)
        self._dir = download_dir
        self._history = history
        self._clock = clock
        self.active: dict[str, Transfer] = {}
        # Transfers of the same bytes share one partial file: one at a time.
        self._schedule = Schedule[Transfer](CONCURRENT_TRANSFERS, lambda t: t.queued.sha256)
        #: Transfers queued or running, by (sha256, destination): a fetch joins them.
        self._by_key: dict[tuple[str, Path], Transfer] = {}
        #: Members a fetch by sha256 found holding a transfer's bytes, by transfer id.
        self._nursery: trio.Nursery | None = None
        self._running_event = trio.Event()
        #: For metrics: finished transfers by status, and file bytes received.
        self.outcomes: Counter[str] = Counter()
        self.received_bytes = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run transfers until cancelled; resumes the persisted queue first."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for queued in await self._history.queued():
                log.info("resuming %s from %s", queued.remote_path, queued.peer_name)
                self._start_soon(self._register(queued))
            self._running_event.set()
            task_status.started()
            await trio.sleep_forever()

    async def start(
        self,
        member: Member,
        entry: SharedFile,
        candidates: list[Candidate] | None = None,
        *,
        name: str = "",
    ) -> Transfer:
        """The transfer of ``entry`` from ``member``: a new one, or the one already queued
        or running for the same bytes to the same destination (same id, same outcome).

        ``candidates``: other members found with the same bytes (a search): with those
        whose kept listings name them, sources of a many-source transfer, and the
        first alternates tried when the transfer comes from one member at a time.
        ``name``: where it lands under download_dir, when not at its path in the
        member's share.

        UnsafePath for a path that breaks the path rule; NotQueued, saying why, when
        there is no room or the destination cannot be looked at.
        """
        dest = destination(self._dir, name or entry.path)
        if (joined := self._joinable(entry.sha256, dest)) is not None:
            return joined
        if len(self.active) >= MAX_TRANSFERS:
            raise QueueFull(
                f"{len(self.active)} transfers are queued or running, the most p2pd takes: "
                "wait for some to finish (`p2pctl downloads`), or cancel some, then fetch again"
            )
        queued = Queued(
            id=secrets.token_hex(4),
            peer_id=member.id,
            peer_name=member.name,
            remote_path=entry.path,
            sha256=entry.sha256,
            size=entry.size,
            started_at=self._clock(),
            dest_name=name,
        )
        await self._running_event.wait()  # the persisted queue is known: it can be joined
        if (joined := self._joinable(entry.sha256, dest)) is not None:
            return joined
        # Registered before the disk and the history are looked at (one worker
        # thread does both): a fetch meanwhile joins it.  Shielded from here on:
        # a registered transfer must start or end (its joiners wait on it), even
        # if the fetch that asked is cancelled meanwhile (a client gone).
        transfer = self._register(queued)
        transfer.extra = list(candidates or [])
        with trio.CancelScope(shield=True):
            try:
                existing = await trio.to_thread.run_sync(self._look_and_enqueue, dest, queued)
            except OSError as exc:
                reason = f"cannot look at {dest}: {exc.strerror or exc}"
                # A fetch that joined meanwhile gets the refusal too.
                transfer.end("failed", reason, self._clock(), recorded=False)
                self._forget(transfer)
                transfer.done.set()
                raise DestinationUnreadable(reason) from None
            if existing is not None:
                transfer.dest = existing
                transfer.progress = Progress(queued.size, queued.size)
                transfer.peer_id, transfer.peer_name = member.id, member.name
                await self._finish(transfer, "ok", None, recorded=False, already_there=True)
                return transfer
        self._start_soon(transfer)
        return transfer

    def _look_and_enqueue(self, dest: Path, queued: Queued) -> Path | None:
        """A copy already at ``dest``; else None once ``queued`` is in the persisted
        queue, or the history said why it could not be (blocking)."""
        existing = existing_copy(
            self._dir, queued.dest_name or queued.remote_path, queued.sha256, queued.size
        )
        if existing is not None:
            return self._dir / existing
        self._history.enqueue(queued)
        return None

    def joins(self, entry: SharedFile) -> bool:
        """Whether a fetch of ``entry`` would join a transfer queued or running."""
        return self._joinable(entry.sha256, destination(self._dir, entry.path)) is not None

    @property
    def room(self) -> int:
        """How many more transfers may be queued now."""
        return max(MAX_TRANSFERS - len(self.active), 0)

    def _joinable(self, sha256: str, dest: Path) -> Transfer | None:
        transfer = self._by_key.get((sha256, dest))
        if transfer is None or transfer.cancel_scope.cancel_called:
            # Cancelled, even if its task has not noticed yet (it may be just past
            # a cancel-shielded checkpoint and still set a busy state).
            return None
        return transfer if transfer.state.joinable else None

    def _register(self, queued: Queued) -> Transfer:
        """A transfer in ``active`` (state queued), and joinable if its destination is valid."""
        try:
            dest = destination(self._dir, queued.dest_name or queued.remote_path)
        except UnsafePath:
            transfer = Transfer(queued, self._dir, Progress(queued.size))  # check_queued refuses it
        else:
            key = (queued.sha256, dest)
            transfer = Transfer(queued, dest, Progress(queued.size), key=key)
            self._by_key.setdefault(key, transfer)
        self.active[queued.id] = transfer
        return transfer

    def _start_soon(self, transfer: Transfer) -> None:
        """Queue it: a task is made only when it may run (``_dispatch``)."""
        assert self._nursery is not None
        if transfer.cancel_scope.cancel_called:  # while it was being looked at
            self._nursery.start_soon(self._end_unstarted, transfer)
            return
        self._schedule.add(transfer)
        self._dispatch()

    def _dispatch(self) -> None:
        """Start the queued transfers that may run now."""
        assert self._nursery is not None
        if self._nursery.cancel_scope.cancel_called:
            return  # shutting down: the rest stays in the persisted queue
        for transfer in self._schedule.ready():
            self._nursery.start_soon(self._run_transfer, transfer)

    def cancel(self, transfer_id: str) -> bool:
        transfer = self.active.get(transfer_id)
        if transfer is None:
            return False
        if transfer.cancel_scope.cancel_called or transfer.state.finished:
            return True  # cancelled already, or its outcome is being recorded: it is ending
        transfer.state = State.CANCELLING
        transfer.cancel_scope.cancel()
        if self._schedule.drop(transfer):
            # It waited its turn, without a task: it ends here, and leaves the
            # partial file (another transfer's, or kept from a failure) alone.
            assert self._nursery is not None
            self._nursery.start_soon(self._end_unstarted, transfer)
        return True

    async def _end_unstarted(self, transfer: Transfer) -> None:
        await self._record(transfer, "cancelled", "cancelled by the user")

    async def _run_transfer(self, transfer: Transfer) -> None:
        """One transfer, start to outcome, inside its own failure boundary.  It alone
        of the transfers of its bytes runs now (the schedule sees to it): it alone
        touches their partial file."""
        sha256 = transfer.queued.sha256
        status: str = "cancelled"
        error: str | None = "cancelled by the user"
        try:
            with transfer.cancel_scope:
                finished, keep_partial = False, False
                try:
                    status, error, keep_partial = await self._outcome_of(transfer)
                    finished = True
                finally:
                    if not keep_partial and (finished or transfer.cancel_scope.cancel_called):
                        with trio.CancelScope(shield=True):
                            await discard_quietly(self._dir, sha256)
        finally:
            self._schedule.done(transfer)
            self._dispatch()
        await self._record(transfer, status, error)

    async def _record(self, transfer: Transfer, status: str, error: str | None) -> None:
        with trio.CancelScope(shield=True), failure_boundary("transfer", "recording", log):
            await self._finish(transfer, status, error)
        # Also when recording failed: nobody waits forever for it.
        self._forget(transfer)
        transfer.done.set()

    def _forget(self, transfer: Transfer) -> None:
        """Off the list of transfers in progress: a fetch from now on starts anew."""
        if self.active.get(transfer.queued.id) is transfer:
            del self.active[transfer.queued.id]
        if transfer.key is not None and self._by_key.get(transfer.key) is transfer:
            del self._by_key[transfer.key]

    async def _outcome_of(self, transfer: Transfer) -> tuple[str, str | None, bool]:
        """(status, error, keep the partial file) of running the transfer's attempts."""
        try:
            check_queued(transfer.queued)
            await self._attempts(transfer)
            return "ok", None, True
        except Fatal as exc:
            return "failed", str(exc), exc.keep_partial
        except Exception as exc:
            # A bug or an unforeseen fault ends this transfer, never the daemon.
            contained("transfer", exc, f"transfer {transfer.queued.id}", log)
            return "failed", f"internal error: {describe(exc)}", True

    def _received(self, transfer: Transfer, window: ProgressWindow, count: int) -> None:
        """Each chunk as it arrives: progress moves smoothly, not in 1 MiB writes."""
        now = trio.current_time()
        self.received_bytes += count
        transfer.progress.update(transfer.progress.bytes_done + count, now)
        transfer.source_entry(transfer.peer_id, transfer.peer_name)["bytes"] += count
        window.add(count, now)

    def _piece_received(self, transfer: Transfer, count: int) -> None:
        """A verified piece of a many-source transfer (its progress is the swarm's)."""
        self.received_bytes += count

    async def _finish(
        self,
        transfer: Transfer,
        status: str,
        error: str | None,
        recorded: bool = True,
        already_there: bool = False,
    ) -> None:
        queued = transfer.queued
        outcome = transfer.end(
            status, error, self._clock(), recorded=recorded, already_there=already_there
        )
        self.outcomes[status] += 1
        await self._history.record(outcome)
        self._forget(transfer)
        log.info(
            "%s %s from %s: %s",
            status,
            queued.remote_path,
            queued.peer_name,
            error or transfer.dest,
        )
        transfer.done.set()

    async def _attempts(self, transfer: Transfer) -> None:
        """Run the rounds that ``Attempts`` plans until one attempt succeeds or it ends."""
        queued = transfer.queued
        plan = Attempts(queued.peer_name)
        known = [(c.member, c.path) for c in transfer.extra]
        while True:
            candidates = await self._candidates.of(transfer)
            if len(candidates) < 2 and await self.swarm.was_swarming(queued.sha256):
                candidates = await self._candidates.look_again(transfer)
            if swarmable(queued.size, candidates):
                try:
                    await self.swarm.attempt(
                        transfer, candidates, lambda: self._candidates.of(transfer)
                    )
                    return
                except Retry as exc:
                    ending = plan.failed("many members", exc)
                    log.info("transfer %s: %s", queued.id, plan.reason)
                    if ending is not None:
                        raise ending from None
                    remaining = await self._candidates.of(transfer)
                    if len(remaining) < len(candidates) and swarmable(queued.size, remaining):
                        continue  # liars were dropped: the honest members, at once
            try:
                member = await self._directory.get(queued.peer_id)
            except LookupUnavailable:
                member = None  # alternates are sought; the next round asks again
            if member is not None and self.swarm.avoided(queued.sha256, member.id):
                member = None  # it lied about these bytes: the others, if any
            chosen = (member, queued.remote_path) if member is not None else None
            alternates = []
            if plan.asks_alternates(chosen is not None):
                alternates = await find_alternates(
                    self._pool, self._directory, transfer.queued, known
                )
                alternates = [
                    (m, path)
                    for m, path in alternates
                    if not self.swarm.avoided(queued.sha256, m.id)
                ]
            sources = plan.sources(chosen, alternates)
            if sources:  # else nothing is asked: the pieces stay for a many-source round
                await self.swarm.settle_for_one(transfer)
            for source, remote_path in sources:
                try:
                    await self._receiver.attempt(transfer, source, remote_path)
                    await self.swarm.forget_layer(queued.sha256)
                    return
                except Retry as exc:
                    ending = plan.failed(source.name, exc)
                    log.info("transfer %s: %s", queued.id, plan.reason)
                    if ending is not None:
                        raise ending from None
            after = plan.round_over()
            if isinstance(after, Fatal):
                raise after
            transfer.state = State.WAITING
            await trio.sleep(after)
