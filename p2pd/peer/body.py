"""The body of one upload: the file's bytes, an upload slot, and the pace it keeps.

Sent two ways: through h11 in chunks (``__anext__``: small bodies, and any
body while a rate limit applies), or by worker threads (``send_itself``:
bodies of DIRECT_MIN or more, p2pd/tls/bodypump.py).  Either way the pace floor
(p2pd/peer/uploads.py) is watched: an upload that keeps a slot from others
without reading is ended, which closes its connection.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, BinaryIO

import trio

from p2pcommon.http.events import Body
from p2pcommon.lifecycle import unwrap_group
from p2pd.peer.uploads import UploadPace
from p2pd.tls.bodypump import DIRECT_MIN, BodyCut, raw_tls, send_direct

if TYPE_CHECKING:
    from p2pd.peer.server import PeerServer

log = logging.getLogger("p2pd.server")

CHUNK = 1024 * 1024
#: Bodies sent by worker threads go in segments of this size: between
#: segments, a rate limit set meanwhile takes effect.
DIRECT_SEGMENT = 64 * 1024 * 1024


class _NoBody(Body):
    """The empty body of a HEAD answer: its Content-Length is GET's, no byte follows."""

    def __aiter__(self) -> _NoBody:
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration


NO_BODY = _NoBody()


class FileBody(Body):
    """The bytes of one upload; holds an upload slot and the open file until closed.

    The HTTP layer calls ``aclose`` whether or not the body was sent, so the
    slot is returned even when the client vanishes before the first byte.
    """

    def __init__(
        self,
        server: PeerServer,
        member: str,
        handle: BinaryIO,
        offset: int,
        length: int,
        ready: bytes = b"",
        *,
        what: str = "",
    ) -> None:
        self._server = server
        self._member = member
        self._what = what or handle.name
        #: Bytes from ``offset`` read already (the whole body of a small file).
        self._ready = ready
        #: The whole body is in memory: the HTTP layer may send it with the head.
        self.in_memory = 0 < len(ready) == length
        self._handle = handle
        self._offset = offset
        self._remaining = length
        self._closed = False
        self._pace = UploadPace(trio.current_time(), server.pace_window)
        #: Why the upload was ended for its pace, once it was.
        self._cut: str | None = None
        #: Sent by worker threads (the answer then says Connection: close).
        self.direct = length >= DIRECT_MIN
        server.stats.active += 1

    def __aiter__(self) -> FileBody:
        return self

    async def __anext__(self) -> bytes:
        if self._remaining <= 0:
            self._server.stats.served_files += 1
            raise StopAsyncIteration
        self._check_pace()
        size = min(CHUNK, self._remaining)
        # Waiting for the rate limit and the disk is ours, not the client's.
        self._pace.our_wait(trio.current_time())
        try:
            bucket = self._server.bucket
            if bucket is not None:
                await bucket.take(size)
            if self._ready:
                chunk, self._ready = self._ready, b""
            else:
                chunk = await trio.to_thread.run_sync(
                    os.pread, self._handle.fileno(), size, self._offset
                )
        finally:
            self._pace.client_again(trio.current_time())
        if not chunk:
            raise OSError(f"{self._handle.name} shrank while being served")
        self._sent(len(chunk))
        return chunk

    async def send_itself(self, stream: trio.abc.Stream, stall_limit: float) -> bool:
        """Send the whole body here, not through h11; False if it cannot (not a large
        body over a TLS socket).

        Segments go from worker threads (p2pd/tls/bodypump.py) while no rate limit
        applies; while one does, pieces paced by ``__anext__`` go on the stream
        (a limit set meanwhile takes effect at the next segment).  The answer
        said ``Connection: close``: h11 does not see these bytes.  Meanwhile a
        watcher ends the upload if it falls under the pace floor.
        """
        tls = raw_tls(stream) if self.direct else None
        if tls is None:
            return False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_pace, nursery.cancel_scope)
                while self._remaining > 0:
                    if self._server.bucket is None:
                        length = min(self._remaining, DIRECT_SEGMENT)
                        try:
                            await send_direct(
                                tls,
                                self._handle.fileno(),
                                self._offset,
                                length,
                                stall_limit=stall_limit,
                                on_sent=self._sent,
                            )
                        except BodyCut as exc:
                            raise trio.BrokenResourceError(str(exc)) from None
                    else:
                        chunk = await self.__anext__()
                        with trio.fail_after(stall_limit):
                            await stream.send_all(chunk)
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise unwrap_group(group) from None
        if self._cut is not None and self._remaining > 0:
            raise trio.BrokenResourceError(self._cut)
        self._server.stats.served_files += 1
        return True

    async def _watch_pace(self, scope: trio.CancelScope) -> None:
        every = min(1.0, self._server.pace_window / 4)
        while self._cut is None:
            await trio.sleep(every)
            self._cut = self._server.too_slow(self._pace, trio.current_time())
        self._ended()
        scope.cancel()

    def _check_pace(self) -> None:
        self._cut = self._server.too_slow(self._pace, trio.current_time())
        if self._cut is not None:
            self._ended()
            raise trio.BrokenResourceError(self._cut)

    def _ended(self) -> None:
        self._server.stats.refused["too slow"] += 1
        log.info("ended the upload of %s to %s: %s", self._what, self._member[:7], self._cut)

    def _sent(self, count: int) -> None:
        self._offset += count
        self._remaining -= count
        self._server.stats.served_bytes += count
        self._pace.add(count, trio.current_time())

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._server.stats.active -= 1
            self._server.release_slot(self._member)
            self._handle.close()
