"""The downloader's TLS stream: like trio.SSLStream, but a receive drains every record.

``trio.SSLStream.receive_some`` returns at most one TLS record (16 KiB) per
call, so a 1 GiB download costs 65 536 trips through trio and h11; profiled,
that overhead and not the cipher was most of the receiver's time.  This
stream reads the socket in large pieces and decrypts everything that arrived
before returning, so a trip carries up to ``max_bytes`` (256 KiB here).

It is the client side of one request-at-a-time connection (PeerConnection):
no concurrent send and receive, hence no locks.  ssl.SSLObject does the TLS;
only the shuttling between it and the socket is ours.
"""

from __future__ import annotations

import ssl
from typing import Any, cast

import trio

from p2pd.tls.bodypump import RawTLS

#: Socket reads: several records at once.
TRANSPORT_RECEIVE = 256 * 1024


class BatchedTLSStream(trio.abc.Stream):
    def __init__(
        self,
        transport: trio.abc.Stream,
        context: ssl.SSLContext,
        *,
        server_hostname: str | None = None,
    ) -> None:
        """``server_hostname``: sent as SNI (p2pd sends its own id: docs/protocol.md §1)."""
        self.transport = transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(
            self._incoming, self._outgoing, server_side=False, server_hostname=server_hostname
        )
        self._eof = False

    def raw(self) -> RawTLS:
        """The connection for blocking use by worker threads; nothing else may use it meanwhile."""
        socket = cast(trio.SocketStream, self.transport).socket
        return RawTLS(socket.fileno(), self.ssl_object, self._incoming, self._outgoing)

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self.ssl_object.getpeercert(binary_form=binary_form)

    async def do_handshake(self, *, hold_last_flight: bool = False) -> None:
        """The client's handshake.  ``hold_last_flight``: our last flight (certificate,
        Finished) stays in the outgoing buffer and leaves with the first send, one
        write and one segment less per connection (TLS 1.3 lets a client send data
        right after its Finished); for a caller whose next step is a send (every
        receive flushes first, but a peer that waits for the Finished would wait)."""
        while True:
            try:
                self.ssl_object.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc
            else:
                if not hold_last_flight:
                    await self._flush()
                return

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self.ssl_object.write(data)
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError(exc) from exc
        await self._flush()

    async def receive_some(self, max_bytes: int | None = None) -> bytearray:
        """Everything decrypted so far, up to ``max_bytes``; waits only when nothing is."""
        size = max_bytes or TRANSPORT_RECEIVE
        buffer = bytearray(size)
        view = memoryview(buffer)
        while True:
            filled = self._decrypt_into(view)
            if self._outgoing.pending:  # e.g. a TLS 1.3 key update to answer
                await self._flush()
            if filled or self._eof:
                view.release()
                del buffer[filled:]
                return buffer
            await self._fill()

    def _decrypt_into(self, view: memoryview) -> int:
        filled = 0
        try:
            while filled < len(view):
                # With a buffer, read() returns a count (typeshed says bytes).
                count = cast(int, self.ssl_object.read(len(view) - filled, view[filled:]))
                if count == 0:
                    self._eof = True
                    break
                filled += count
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self._eof = True  # the peer's close_notify: a clean end
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError(exc) from exc
        return filled

    async def _fill(self) -> None:
        data = await self.transport.receive_some(TRANSPORT_RECEIVE)
        if not data:
            # Without close_notify first, the next read raises SSLEOFError:
            # the answer may have been cut short (as trio.SSLStream says too).
            self._incoming.write_eof()
            return
        self._incoming.write(data)

    async def _flush(self) -> None:
        if self._outgoing.pending:
            await self.transport.send_all(self._outgoing.read())

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.transport.aclose()
