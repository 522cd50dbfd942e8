"""Downloads: resumable, verified, atomic, retried from any member with the same bytes.

A transfer writes into a hidden partial file named by the content's sha256,
resumes it with ``Range`` (rebuilding the hash state from the bytes on disk),
verifies the sha256 of the listing, fsyncs, and links the file into place
under a free name, so that nothing is ever at a final name unverified and no
existing file is overwritten.  Every outcome goes to the history.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import trio

from p2pcommon.backoff import Backoff
from p2pcommon.boundary import describe, failure_boundary, failures
from p2pcommon.models import SHA256_PATTERN, Member, SharedFile
from p2pcommon.paths import UnsafePath, check_relpath
from p2pcommon.service import one_line, unwrap_group
from p2pd.history import History, HistoryUnavailable, Outcome, Queued
from p2pd.members import Members
from p2pd.partial import (
    close_quietly,
    existing_copy,
    place,
    resume_state,
)
from p2pd.peerclient import (
    Head,
    InvalidListing,
    PeerConnection,
    PeerPool,
    PeerRefused,
    PeerUnreachable,
)
from p2pd.peerserver import repr_digest
from p2pd.transfer import Progress, destination, partial_path

log = logging.getLogger("p2pd.downloads")

MAX_ATTEMPTS = 6
#: Seconds a member has to answer a file request with its head (and an error body).
ANSWER_TIMEOUT = 30.0
#: A transfer that receives less than MIN_PROGRESS bytes in PROGRESS_WINDOW
#: seconds gives up on that member (a trickle holds a transfer slot forever).
PROGRESS_WINDOW = 60.0
MIN_PROGRESS = 64 * 1024
#: Looking for other members with the same bytes: how many are asked (at
#: most), how many at once, and for how long in all.
MAX_ALTERNATES_ASKED = 32
ALTERNATES_AT_ONCE = 8
ALTERNATES_DEADLINE = 5.0
#: Outcomes kept in memory while the history cannot be written.
UNRECORDED_KEPT = 100
_SHA256 = re.compile(SHA256_PATTERN)
#: Transfers running at once; the others wait their turn in state "queued".
CONCURRENT_TRANSFERS = 8
WRITE_BLOCK = 1024 * 1024


class Retry(Exception):
    """This attempt failed; another (maybe from another member) may succeed.

    ``final``: the member refused in a way that asking again cannot change.
    """

    def __init__(self, reason: str, *, final: bool = False) -> None:
        super().__init__(reason)
        self.final = final


class Changed(Retry):
    """The member now has other bytes under that path than were listed."""


class Fatal(Exception):
    """The transfer cannot succeed; the message is the reason in the history.

    The partial file is removed unless ``keep_partial``: bytes of a member that
    only went away are worth keeping for the next fetch of the same content.
    """

    def __init__(self, reason: str, *, keep_partial: bool = False) -> None:
        super().__init__(reason)
        self.keep_partial = keep_partial


@dataclass
class Transfer:
    queued: Queued
    dest: Path
    progress: Progress
    state: str = "queued"
    #: The member of the current (last) attempt: not always the one asked first.
    peer_id: str = ""
    peer_name: str = ""
    done: trio.Event = field(default_factory=trio.Event)
    outcome: Outcome | None = None
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.queued.id,
            "path": str(self.dest),
            "remote_path": self.queued.remote_path,
            "peer_id": self.peer_id or self.queued.peer_id,
            "size": self.queued.size,
            "bytes_done": self.progress.bytes_done,
            "state": self.state,
            "rate": round(self.progress.rate),
        }


def _check_framing(head: Head, size: int, offset: int) -> None:
    """The answer carries exactly the listed bytes from ``offset``: a member cannot
    make us write more than the listing said (a disk-filling stream) or at
    another offset than we asked."""
    expected = size - offset
    length = head.headers.get("content-length", "")
    if not length.isdigit() or int(length) != expected:
        raise Retry(f"announced {length or 'no length'} where {expected} bytes were expected")
    if head.status == 206 and not head.headers.get("content-range", "").startswith(
        f"bytes {offset}-"
    ):
        raise Retry(f"answered another range than the bytes from {offset}")


def _check_queued(queued: Queued) -> None:
    """Refuse a queued transfer whose fields are unsafe (one persisted by an older version)."""
    if not _SHA256.fullmatch(queued.sha256):
        raise Fatal("the member listed an invalid sha256; nothing was downloaded")
    try:
        check_relpath(queued.remote_path)
    except UnsafePath as exc:
        raise Fatal(f"refusing {queued.remote_path!r}: {exc}") from None
    if queued.size < 0:
        raise Fatal("the member listed a negative size; nothing was downloaded")


def _fatal_os_error(exc: OSError, where: Path) -> Fatal:
    if exc.errno == errno.ENOSPC:
        return Fatal(f"disk full writing {where}: free some space and fetch again")
    if exc.errno == errno.EROFS:
        return Fatal(
            f"{where} is on a read-only file system: remount it read-write and fetch again"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return Fatal(f"permission denied writing {where}: {exc.strerror}")
    return Fatal(f"cannot write {where}: {exc.strerror or exc}")


class Downloads:
    def __init__(
        self,
        pool: PeerPool,
        members: Members,
        download_dir: Path,
        history: History,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self._members = members
        self._dir = download_dir
        self._history = history
        self._clock = clock
        self.active: dict[str, Transfer] = {}
        self._running = trio.CapacityLimiter(CONCURRENT_TRANSFERS)
        # Transfers of the same bytes share one partial file: one at a time.
        self._same_bytes: dict[str, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None
        #: Why the history cannot be written now, for status; None when it can.
        self.history_error: str | None = None
        self.unrecorded: list[Outcome] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run transfers until cancelled; resumes the persisted queue first."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                queue = await trio.to_thread.run_sync(self._history.queued)
            except HistoryUnavailable as exc:
                self.history_failed(exc)
                queue = []
            for queued in queue:
                log.info("resuming %s from %s", queued.remote_path, queued.peer_name)
                self._launch(queued)
            task_status.started()
            await trio.sleep_forever()

    async def start(self, member: Member, entry: SharedFile) -> Transfer:
        queued = Queued(
            id=secrets.token_hex(4),
            peer_id=member.id,
            peer_name=member.name,
            remote_path=entry.path,
            sha256=entry.sha256,
            size=entry.size,
            started_at=self._clock(),
        )
        dest = destination(self._dir, queued.remote_path)
        try:
            existing = await trio.to_thread.run_sync(existing_copy, dest, queued.sha256)
        except OSError as exc:
            raise ValueError(f"cannot look at {dest}: {exc.strerror or exc}") from None
        if existing is not None:
            transfer = Transfer(queued, existing, Progress(queued.size, queued.size), state="done")
            transfer.peer_id, transfer.peer_name = member.id, member.name
            await self._finish(transfer, "ok", None, recorded=False)
            return transfer
        try:
            await trio.to_thread.run_sync(self._history.enqueue, queued)
        except HistoryUnavailable as exc:
            # The transfer is worth more than its resumability after a restart.
            self.history_failed(exc)
        return self._launch(queued)

    def _launch(self, queued: Queued) -> Transfer:
        assert self._nursery is not None
        try:
            dest = destination(self._dir, queued.remote_path)
        except ValueError:
            dest = self._dir  # refused by _check_queued before any use
        transfer = Transfer(queued, dest, Progress(queued.size))
        self.active[queued.id] = transfer
        self._nursery.start_soon(self._run_transfer, transfer)
        return transfer

    def history_failed(self, exc: HistoryUnavailable) -> None:
        if self.history_error != str(exc):
            log.error("%s; transfers go on, but are not recorded", exc)
        self.history_error = str(exc)

    def cancel(self, transfer_id: str) -> bool:
        transfer = self.active.get(transfer_id)
        if transfer is None:
            return False
        transfer.state = "cancelling"
        transfer.cancel_scope.cancel()
        return True

    async def _run_transfer(self, transfer: Transfer) -> None:
        """One transfer, start to outcome, inside its own failure boundary."""
        sha256 = transfer.queued.sha256
        status: str = "cancelled"
        error: str | None = "cancelled by the user"
        lock = self._same_bytes.setdefault(sha256, trio.Lock())
        with transfer.cancel_scope:
            async with lock, self._running:
                # Only the holder of the lock touches the shared partial file:
                # cancelling a transfer that waits its turn must not delete it.
                finished, keep_partial = False, False
                try:
                    status, error, keep_partial = await self._outcome_of(transfer)
                    finished = True
                finally:
                    if not keep_partial and (finished or transfer.cancel_scope.cancel_called):
                        with trio.CancelScope(shield=True):
                            await self._discard_partial(sha256)
        if not lock.locked() and not lock.statistics().tasks_waiting:
            self._same_bytes.pop(sha256, None)
        with trio.CancelScope(shield=True), failure_boundary("transfer", "recording", log):
            await self._finish(transfer, status, error)
        # Also when recording failed: nobody waits forever for it.
        self.active.pop(transfer.queued.id, None)
        transfer.done.set()

    async def _outcome_of(self, transfer: Transfer) -> tuple[str, str | None, bool]:
        """(status, error, keep the partial file) of running the transfer's attempts."""
        try:
            _check_queued(transfer.queued)
            await self._attempts(transfer)
            return "ok", None, True
        except Fatal as exc:
            return "failed", str(exc), exc.keep_partial
        except Exception as exc:
            # A bug or an unforeseen fault ends this transfer, never the daemon.
            failures["transfer"] += 1
            log.error("transfer %s failed: %s", transfer.queued.id, describe(exc))
            log.debug("transfer %s failed", transfer.queued.id, exc_info=True)
            return "failed", f"internal error: {describe(exc)}", True

    async def _discard_partial(self, sha256: str) -> None:
        if not _SHA256.fullmatch(sha256):
            return
        partial = partial_path(self._dir, sha256)
        try:
            await trio.to_thread.run_sync(lambda: partial.unlink(missing_ok=True))
        except OSError as exc:  # e.g. download_dir remounted read-only
            log.warning("cannot remove %s: %s", partial, exc.strerror or exc)

    async def _finish(
        self, transfer: Transfer, status: str, error: str | None, recorded: bool = True
    ) -> None:
        queued = transfer.queued
        finished = self._clock()
        elapsed = max(finished - queued.started_at, 1e-6)
        transfer.state = "done" if status == "ok" else status
        transfer.outcome = Outcome(
            id=queued.id,
            path=str(transfer.dest),
            remote_path=queued.remote_path,
            peer_id=transfer.peer_id or queued.peer_id,
            peer_name=transfer.peer_name or queued.peer_name,
            sha256=queued.sha256,
            size=queued.size,
            status=status,
            error=error,
            started_at=queued.started_at,
            finished_at=finished,
            bytes_per_second=transfer.progress.bytes_done / elapsed if recorded else 0.0,
        )
        try:
            await trio.to_thread.run_sync(self._history.finish, transfer.outcome)
        except HistoryUnavailable as exc:
            self.history_failed(exc)
            self.unrecorded.append(transfer.outcome)
            del self.unrecorded[:-UNRECORDED_KEPT]
        else:
            self.history_error = None
        self.active.pop(queued.id, None)
        log.info(
            "%s %s from %s: %s",
            status,
            queued.remote_path,
            queued.peer_name,
            error or transfer.dest,
        )
        transfer.done.set()

    async def _alternates(self, transfer: Transfer) -> list[tuple[Member, str]]:
        """Other members listing the same bytes, each with its own path for them.

        Asked concurrently, a bounded number at a time, under one short
        deadline: a silent or hostile member costs seconds, not the transfer.
        """
        queued = transfer.queued
        others = [m for m in self._members.others() if m.id != queued.peer_id]
        if len(others) > MAX_ALTERNATES_ASKED:
            others = random.sample(others, MAX_ALTERNATES_ASKED)
        found: list[tuple[Member, str]] = []
        limiter = trio.CapacityLimiter(ALTERNATES_AT_ONCE)

        async def ask(member: Member) -> None:
            async with limiter:
                with failure_boundary("source lookup", f"asking {member.name}", log):
                    try:
                        listing = await self._pool.listing(member)
                    except (PeerUnreachable, PeerRefused, InvalidListing) as exc:
                        log.info("transfer %s: no source: %s", queued.id, exc)
                        return
                    for entry in listing.files:
                        if entry.sha256 == queued.sha256 and entry.size == queued.size:
                            found.append((member, entry.path))
                            return

        with trio.move_on_after(ALTERNATES_DEADLINE):
            async with trio.open_nursery() as nursery:
                for member in others:
                    nursery.start_soon(ask, member)
        return found

    async def _attempts(self, transfer: Transfer) -> None:
        """The chosen member first; after it fails, any member with the same bytes."""
        queued = transfer.queued
        backoff = Backoff(base=0.5, cap=10.0)
        reason = f"{queued.peer_name} is offline"
        for round_number in range(MAX_ATTEMPTS):
            first = self._members.get(queued.peer_id)
            sources = [(first, queued.remote_path)] if first is not None else []
            if round_number or not sources:
                sources += await self._alternates(transfer)
            changed_everywhere = None
            for member, remote_path in sources:
                try:
                    await self._attempt(transfer, member, remote_path)
                    return
                except Retry as exc:
                    reason = f"{member.name}: {exc}"
                    changed_everywhere = (
                        isinstance(exc, Changed) and changed_everywhere is not False
                    )
                    log.info("transfer %s: %s", queued.id, reason)
                    if exc.final:
                        raise Fatal(reason) from None
            if changed_everywhere:
                raise Fatal(reason)
            transfer.state = "waiting"
            await trio.sleep(backoff.next_delay())
        raise Fatal(f"gave up after {MAX_ATTEMPTS} attempts: {reason}", keep_partial=True)

    async def _attempt(self, transfer: Transfer, member: Member, remote_path: str) -> None:
        queued = transfer.queued
        partial = partial_path(self._dir, queued.sha256)
        transfer.state = "connecting"
        transfer.peer_id, transfer.peer_name = member.id, member.name
        try:
            digest, offset = await trio.to_thread.run_sync(resume_state, partial, queued.size)
        except OSError as exc:
            raise _fatal_os_error(exc, partial) from None
        transfer.progress.update(offset, trio.current_time())
        if queued.size and offset >= queued.size:
            await self._verify_and_place(transfer, partial, digest)  # complete before a restart
            return
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with trio.fail_after(ANSWER_TIMEOUT):
                connection, head = await self._pool.request(
                    member, "/files/" + quote(remote_path), headers
                )
        except PeerUnreachable as exc:
            raise Retry(str(exc)) from None
        except trio.TooSlowError:
            raise Retry(f"no answer within {ANSWER_TIMEOUT:g} s") from None
        completed = False
        try:
            if head.status == 200 and offset:
                digest, offset = hashlib.sha256(), 0  # the member ignored Range: start over
            elif head.status not in (200, 206):
                body = b""
                with trio.move_on_after(ANSWER_TIMEOUT):
                    body = await connection.body(65536)
                text = one_line(body[:200].decode(errors="replace"), 200)
                # A 4xx other than 404/408/429 will not change by asking again.
                final = 400 <= head.status < 500 and head.status not in (404, 408, 429)
                raise Retry(f"answered {head.status}: {text}", final=final)
            _check_framing(head, queued.size, offset)
            if head.headers.get("repr-digest") != repr_digest(queued.sha256):
                raise Changed(
                    f"{remote_path} changed since it was listed (sha256 differs now): "
                    "list it again and fetch the new version"
                )
            transfer.state = "downloading"
            await self._receive(transfer, connection, partial, offset, digest)
            completed = True
        except PeerUnreachable as exc:
            raise Retry(f"connection lost: {exc}") from None
        finally:
            if completed:
                await self._pool.release(connection)
            else:
                await connection.aclose()
        await self._verify_and_place(transfer, partial, digest)

    async def _receive(
        self,
        transfer: Transfer,
        connection: PeerConnection,
        partial: Path,
        offset: int,
        digest: Any,
    ) -> None:
        """Write the body at ``offset``, hashing it; the file is opened by the first write.

        Double-buffered: while a worker thread hashes and writes one block
        (both release the GIL), this task decrypts the next, so that receiving
        costs max(decrypt, hash + write) rather than their sum; at most two
        1 MiB blocks are held.  A small file costs one thread hop for opening,
        writing, fsync and closing.
        """
        handle: Any = None
        done = offset
        pending: list[bytes] = []
        pending_size = 0

        def write(blocks: list[bytes], at: int, last: bool) -> None:
            nonlocal handle
            if handle is None:
                handle = open(partial, "r+b" if offset else "wb")  # noqa: SIM115
            handle.seek(at)
            # Block by block: joining them first would double the memory held.
            for block in blocks:
                handle.write(block)
                digest.update(block)
            if last:
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()
                handle = None

        # Capacity 0: a block is handed over only when the writer is free.
        to_writer, for_writer = trio.open_memory_channel[tuple[list[bytes], int, bool]](0)

        async def writer() -> None:
            async with for_writer:
                async for blocks, at, last in for_writer:
                    await trio.to_thread.run_sync(write, blocks, at, last)
                    written = at + sum(map(len, blocks))
                    transfer.progress.update(written, trio.current_time())

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                async with to_writer:
                    window_start, window_bytes = trio.current_time(), 0
                    async for chunk in connection.body_chunks():
                        pending.append(chunk)
                        pending_size += len(chunk)
                        window_bytes += len(chunk)
                        if trio.current_time() - window_start >= PROGRESS_WINDOW:
                            if window_bytes < MIN_PROGRESS:
                                raise Retry(
                                    f"sent {window_bytes} bytes in {PROGRESS_WINDOW:g} s: too slow"
                                )
                            window_start, window_bytes = trio.current_time(), 0
                        if pending_size >= WRITE_BLOCK:
                            await to_writer.send((pending, done, False))
                            done += pending_size
                            pending, pending_size = [], 0
                    await to_writer.send((pending, done, True))
        except BaseExceptionGroup as group:
            # One task failed and the other was cancelled: handle the failure itself.
            error = unwrap_group(group)
            if isinstance(error, OSError):
                await self._discard_partial(transfer.queued.sha256)
                raise _fatal_os_error(error, self._dir) from None
            raise error from None
        finally:
            if handle is not None:
                # Shielded: a handle left open in a cancelled scope leaks until GC.
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(close_quietly, handle)

    async def _verify_and_place(self, transfer: Transfer, partial: Path, digest: Any) -> None:
        queued = transfer.queued
        if transfer.progress.bytes_done != queued.size or digest.hexdigest() != queued.sha256:
            # Never resume from bytes that do not hash right.
            await self._discard_partial(queued.sha256)
            raise Retry("hash mismatch: the bytes received are not the listed file; discarded")
        transfer.state = "placing"
        try:
            transfer.dest = await trio.to_thread.run_sync(place, partial, transfer.dest)
        except OSError as exc:
            raise _fatal_os_error(exc, transfer.dest) from None
