"""One attempt of a transfer: ask one member, check its answer, receive, verify, place.

The answer's head is checked before a byte of its body is taken: exactly the
listed bytes from the offset asked for, framed by Content-Length alone, and
named by a Repr-Digest of the listed sha256 (docs/protocol.md §4.3, §5).  The
body goes into memory for a small file, into the partial file otherwise (by
worker threads when large, through h11 if not), counted against the listed
size on every path; then the file on disk is verified (length and sha256) and
linked into place.  ``p2pd.fetch.downloads`` runs the rounds and keeps the records.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import trio

from p2pcommon.http.client import Head
from p2pcommon.models import Member
from p2pcommon.service import one_line
from p2pd.fetch.attempts import (
    Changed,
    ProgressWindow,
    Retry,
    check_framing,
    check_repr_digest,
    fatal_os_error,
    is_sha256,
    refused,
)
from p2pd.fetch.model import Progress, State
from p2pd.fetch.names import partial_path
from p2pd.fetch.partial import (
    SMALL_FILE,
    Partial,
    TooManyBytes,
    discard_partial,
    place,
    receive,
    restart,
    resume_state,
    store_small,
)
from p2pd.fetch.transfer import Transfer
from p2pd.peer.client import PeerConnection, PeerPool, PeerUnreachable
from p2pd.tls.bodypump import BodyCut, receive_direct

log = logging.getLogger("p2pd.downloads")

#: Seconds a member has to answer a file request with its head (and an error body).
ANSWER_TIMEOUT = 30.0


async def discard_quietly(download_dir: Path, sha256: str) -> None:
    """Remove the partial file of ``sha256``; a failure is logged, not raised."""
    if not is_sha256(sha256):
        return
    try:
        await trio.to_thread.run_sync(discard_partial, download_dir, sha256)
    except OSError as exc:  # e.g. download_dir remounted read-only
        log.warning("cannot remove %s: %s", partial_path(download_dir, sha256), exc.strerror or exc)


@dataclass
class Receiver:
    pool: PeerPool
    download_dir: Path
    #: Each piece of body as it arrives: progress, the window check (may raise), metrics.
    on_received: Callable[[Transfer, ProgressWindow, int], None]

    async def attempt(self, transfer: Transfer, member: Member, remote_path: str) -> None:
        """One attempt from ``member``: the transfer's file placed, or Retry/Fatal."""
        queued = transfer.queued
        transfer.state = State.CONNECTING
        transfer.peer_id, transfer.peer_name = member.id, member.name
        # A small file is received whole, then written from its start: no resume.
        if queued.size <= SMALL_FILE:
            transfer.progress.update(0, trio.current_time())
            blocks = await self._fetch(transfer, member, remote_path, None)
            assert blocks is not None
            await self._store_small(transfer, blocks)
            return
        try:
            partial = await trio.to_thread.run_sync(
                resume_state, self.download_dir, queued.sha256, queued.size
            )
        except OSError as exc:
            raise fatal_os_error(exc, partial_path(self.download_dir, queued.sha256)) from None
        try:
            transfer.progress.update(partial.offset, trio.current_time())
            if partial.offset < queued.size:
                await self._fetch(transfer, member, remote_path, partial)
            await self._verify_and_place(transfer, partial)  # also one complete before a restart
        finally:
            os.close(partial.fd)

    async def _fetch(
        self, transfer: Transfer, member: Member, remote_path: str, partial: Partial | None
    ) -> list[bytes] | None:
        """Ask ``member`` for the bytes: into ``partial`` from its offset, or (None) into
        memory, returned.  The answer's framing and digest are checked before a byte
        of its body is taken."""
        queued = transfer.queued
        offset = partial.offset if partial is not None else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with trio.fail_after(ANSWER_TIMEOUT):
                connection, head = await self.pool.request(
                    member, "/files/" + quote(remote_path), headers
                )
        except PeerUnreachable as exc:
            raise Retry(str(exc)) from None
        except trio.TooSlowError:
            raise Retry(f"no answer within {ANSWER_TIMEOUT:g} s") from None
        completed = False
        try:
            if head.status == 200 and partial is not None and offset:
                # The member ignored Range: start over.
                await trio.to_thread.run_sync(restart, partial)
                offset = 0
                transfer.progress = Progress(queued.size)
            elif head.status not in (200, 206):
                body = b""
                with trio.move_on_after(ANSWER_TIMEOUT):
                    body = await connection.body(65536)
                raise refused(head.status, one_line(body[:200].decode(errors="replace"), 200))
            check_framing(head.status, head.fields, queued.size, offset)
            check_repr_digest(head.header("repr-digest"), queued.sha256, remote_path)
            transfer.state = State.DOWNLOADING
            blocks = await self._receive_body(transfer, connection, head, partial)
            completed = True
        except PeerUnreachable as exc:
            raise Retry(f"connection lost: {exc}") from None
        finally:
            if completed:
                await self.pool.release(connection)
            else:
                await connection.aclose()
        return blocks

    async def _receive_body(
        self,
        transfer: Transfer,
        connection: PeerConnection,
        head: Head,
        partial: Partial | None,
    ) -> list[bytes] | None:
        """The answer's body: in memory (returned) for a small file, else into the
        partial file, by worker threads if it is large, through h11 if not.

        On every path the bytes are counted against the listed size: the first
        one past it ends the attempt unwritten (the framing was checked, so only
        a bug of ours or of h11 would get there).
        """
        queued = transfer.queued
        window = ProgressWindow(trio.current_time())

        def on_chunk(count: int) -> None:
            self.on_received(transfer, window, count)

        try:
            if partial is None:
                blocks, received = [], 0
                async for chunk in connection.body_chunks():
                    received += len(chunk)
                    if received > queued.size:
                        raise TooManyBytes(f"sent more than the {queued.size} bytes listed")
                    blocks.append(chunk)
                    on_chunk(len(chunk))
                return blocks
            if (direct := connection.take_body(head)) is not None:
                if direct.length != queued.size - partial.offset:
                    raise TooManyBytes(f"sent a body of {direct.length} bytes")
                await receive_direct(
                    direct, partial.fd, partial.offset, partial.digest, on_chunk=on_chunk
                )
            else:
                await receive(
                    connection.body_chunks(),
                    partial.fd,
                    partial.offset,
                    queued.size,
                    partial.digest,
                    on_chunk=on_chunk,
                    # Progress follows what arrived; receive() returns once all is written.
                    on_written=lambda done: None,
                )
        except TooManyBytes as exc:
            raise Changed(f"{exc}: refused, nothing past them was written") from None
        except BodyCut as exc:
            raise Retry(f"connection lost: {connection.member.name} {exc}") from None
        except OSError as exc:
            await discard_quietly(self.download_dir, queued.sha256)
            raise fatal_os_error(exc, self.download_dir) from None
        return None

    async def _store_small(self, transfer: Transfer, blocks: list[bytes]) -> None:
        """Write, fsync, verify and place a small file's bytes in one worker thread."""
        queued = transfer.queued
        transfer.state = State.PLACING
        try:
            placed = await trio.to_thread.run_sync(
                store_small,
                self.download_dir,
                queued.sha256,
                queued.size,
                blocks,
                queued.dest_name or queued.remote_path,
            )
        except OSError as exc:
            await discard_quietly(self.download_dir, queued.sha256)
            raise fatal_os_error(exc, self.download_dir) from None
        transfer.dest = self.download_dir / placed

    async def _verify_and_place(self, transfer: Transfer, partial: Partial) -> None:
        """Exactly the listed size on disk and the listed sha256, then linked into place;
        bytes that do not verify are discarded (Retry): a resume never starts from them."""
        queued = transfer.queued
        transfer.state = State.PLACING
        try:
            placed = await trio.to_thread.run_sync(
                place,
                self.download_dir,
                partial,
                queued.sha256,
                queued.size,
                queued.dest_name or queued.remote_path,
            )
        except OSError as exc:
            raise fatal_os_error(exc, transfer.dest) from None
        transfer.dest = self.download_dir / placed
