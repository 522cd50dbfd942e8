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
import itertools
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import trio

from p2pcommon.backoff import Backoff
from p2pcommon.models import Member
from p2pcommon.service import unwrap_group
from p2pd.history import History, Outcome, Queued
from p2pd.members import Members
from p2pd.peerclient import PeerConnection, PeerPool, PeerRefused, PeerUnreachable
from p2pd.peerserver import repr_digest
from p2pd.transfer import Progress, destination, free_name, numbered, partial_path

log = logging.getLogger("p2pd.downloads")

MAX_ATTEMPTS = 6
#: Transfers running at once; the others wait their turn in state "queued".
CONCURRENT_TRANSFERS = 8
WRITE_BLOCK = 1024 * 1024


class Retry(Exception):
    """This attempt failed; another (maybe from another member) may succeed."""


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
    peer_id: str = ""
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


def _hash_file(path: Path, limit: int) -> tuple[Any, int]:
    digest = hashlib.sha256()
    done = 0
    with path.open("rb") as f:
        while done < limit and (block := f.read(min(WRITE_BLOCK, limit - done))):
            digest.update(block)
            done += len(block)
    return digest, done


def _same_content(path: Path, sha256: str) -> bool:
    try:
        return path.is_file() and _hash_file(path, path.stat().st_size)[0].hexdigest() == sha256
    except OSError:
        return False


def _existing_copy(dest: Path, sha256: str) -> Path | None:
    """``dest`` or one of its numbered siblings, if it already holds these bytes."""
    for number in itertools.count():
        candidate = numbered(dest, number)
        if not candidate.exists():
            return None
        if _same_content(candidate, sha256):
            return candidate
    raise AssertionError("unreachable")


def _place(partial: Path, dest: Path) -> Path:
    """Link the verified partial file to a free name next to ``dest``; never overwrite."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    while True:
        target = free_name(dest, lambda p: p.exists() or p.is_symlink())
        try:
            os.link(partial, target)
        except FileExistsError:
            continue  # taken since we looked: take the next one
        partial.unlink()
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return target


def _fatal_os_error(exc: OSError, where: Path) -> Fatal:
    if exc.errno == errno.ENOSPC:
        return Fatal(f"disk full writing {where}: free some space and fetch again")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
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

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run transfers until cancelled; resumes the persisted queue first."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for queued in await trio.to_thread.run_sync(self._history.queued):
                log.info("resuming %s from %s", queued.remote_path, queued.peer_name)
                self._launch(queued)
            task_status.started()
            await trio.sleep_forever()

    async def start(self, member: Member, entry: dict[str, Any]) -> Transfer:
        queued = Queued(
            id=secrets.token_hex(4),
            peer_id=member.id,
            peer_name=member.name,
            remote_path=str(entry["path"]),
            sha256=str(entry["sha256"]),
            size=int(entry["size"]),
            started_at=self._clock(),
        )
        dest = destination(self._dir, queued.remote_path)
        existing = await trio.to_thread.run_sync(_existing_copy, dest, queued.sha256)
        if existing is not None:
            transfer = Transfer(queued, existing, Progress(queued.size, queued.size), state="done")
            transfer.peer_id = member.id
            await self._finish(transfer, "ok", None, recorded=False)
            return transfer
        await trio.to_thread.run_sync(self._history.enqueue, queued)
        return self._launch(queued)

    def _launch(self, queued: Queued) -> Transfer:
        assert self._nursery is not None
        transfer = Transfer(
            queued, destination(self._dir, queued.remote_path), Progress(queued.size)
        )
        self.active[queued.id] = transfer
        self._nursery.start_soon(self._run_transfer, transfer)
        return transfer

    def cancel(self, transfer_id: str) -> bool:
        transfer = self.active.get(transfer_id)
        if transfer is None:
            return False
        transfer.state = "cancelling"
        transfer.cancel_scope.cancel()
        return True

    async def _run_transfer(self, transfer: Transfer) -> None:
        status, error, keep_partial = "failed", None, False
        sha256 = transfer.queued.sha256
        lock = self._same_bytes.setdefault(sha256, trio.Lock())
        with transfer.cancel_scope:
            async with lock, self._running:
                try:
                    await self._attempts(transfer)
                    status, keep_partial = "ok", True
                except Fatal as exc:
                    error, keep_partial = str(exc), exc.keep_partial
        if not lock.locked() and not lock.statistics().tasks_waiting:
            self._same_bytes.pop(sha256, None)
        if transfer.cancel_scope.cancelled_caught:
            status, error, keep_partial = "cancelled", "cancelled by the user", False
        if not keep_partial:
            partial = partial_path(self._dir, transfer.queued.sha256)
            await trio.to_thread.run_sync(lambda: partial.unlink(missing_ok=True))
        with trio.CancelScope(shield=True):
            await self._finish(transfer, status, error)

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
            peer_name=queued.peer_name,
            sha256=queued.sha256,
            size=queued.size,
            status=status,
            error=error,
            started_at=queued.started_at,
            finished_at=finished,
            bytes_per_second=transfer.progress.bytes_done / elapsed if recorded else 0.0,
        )
        await trio.to_thread.run_sync(self._history.finish, transfer.outcome)
        self.active.pop(queued.id, None)
        log.info(
            "%s %s from %s: %s",
            status,
            queued.remote_path,
            queued.peer_name,
            error or transfer.dest,
        )
        transfer.done.set()

    async def _sources(self, transfer: Transfer) -> list[Member]:
        """The chosen member first, then others that list the same sha256."""
        queued = transfer.queued
        first = self._members.get(queued.peer_id)
        sources = [first] if first is not None else []
        for member in self._members.others():
            if member.id == queued.peer_id:
                continue
            try:
                listing = await self._pool.listing(member)
            except (PeerUnreachable, PeerRefused, ValueError):
                continue  # an unreachable alternative is no source
            if any(f.get("sha256") == queued.sha256 for f in listing.get("files", [])):
                sources.append(member)
        return sources

    async def _attempts(self, transfer: Transfer) -> None:
        backoff = Backoff(base=0.5, cap=10.0)
        reason = f"{transfer.queued.peer_name} is offline"
        for _ in range(MAX_ATTEMPTS):
            changed_everywhere = None
            for member in await self._sources(transfer):
                try:
                    await self._attempt(transfer, member)
                    return
                except Retry as exc:
                    reason = f"{member.name}: {exc}"
                    changed_everywhere = (
                        isinstance(exc, Changed) and changed_everywhere is not False
                    )
                    log.info("transfer %s: %s", transfer.queued.id, reason)
            if changed_everywhere:
                raise Fatal(reason)
            transfer.state = "waiting"
            await trio.sleep(backoff.next_delay())
        raise Fatal(f"gave up after {MAX_ATTEMPTS} attempts: {reason}", keep_partial=True)

    async def _attempt(self, transfer: Transfer, member: Member) -> None:
        queued = transfer.queued
        partial = partial_path(self._dir, queued.sha256)
        transfer.state = "connecting"
        transfer.peer_id = member.id
        offset = 0
        digest: Any = hashlib.sha256()
        if await trio.to_thread.run_sync(partial.exists):
            digest, offset = await trio.to_thread.run_sync(_hash_file, partial, queued.size)
        transfer.progress.update(offset, trio.current_time())
        if queued.size and offset >= queued.size:
            await self._verify_and_place(transfer, partial, digest)  # complete before a restart
            return
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            connection, head = await self._pool.request(
                member, "/files/" + quote(queued.remote_path), headers
            )
        except PeerUnreachable as exc:
            raise Retry(str(exc)) from None
        completed = False
        try:
            if head.status == 200 and offset:
                digest, offset = hashlib.sha256(), 0  # the member ignored Range: start over
            elif head.status not in (200, 206):
                body = await connection.body(65536)
                raise Retry(f"answered {head.status}: {body[:200].decode(errors='replace')}")
            if head.headers.get("repr-digest") != repr_digest(queued.sha256):
                raise Changed(
                    f"{queued.remote_path} changed since it was listed (sha256 differs now): "
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
                    async for chunk in connection.body_chunks():
                        pending.append(chunk)
                        pending_size += len(chunk)
                        if pending_size >= WRITE_BLOCK:
                            await to_writer.send((pending, done, False))
                            done += pending_size
                            pending, pending_size = [], 0
                    await to_writer.send((pending, done, True))
        except BaseExceptionGroup as group:
            # One task failed and the other was cancelled: handle the failure itself.
            error = unwrap_group(group)
            if isinstance(error, OSError):
                await trio.to_thread.run_sync(lambda: partial.unlink(missing_ok=True))
                raise _fatal_os_error(error, self._dir) from None
            raise error from None
        finally:
            if handle is not None:
                await trio.to_thread.run_sync(handle.close)

    async def _verify_and_place(self, transfer: Transfer, partial: Path, digest: Any) -> None:
        queued = transfer.queued
        if transfer.progress.bytes_done != queued.size or digest.hexdigest() != queued.sha256:
            # Never resume from bytes that do not hash right.
            await trio.to_thread.run_sync(lambda: partial.unlink(missing_ok=True))
            raise Retry("hash mismatch: the bytes received are not the listed file; discarded")
        transfer.state = "placing"
        try:
            transfer.dest = await trio.to_thread.run_sync(_place, partial, transfer.dest)
        except OSError as exc:
            raise _fatal_os_error(exc, transfer.dest) from None
