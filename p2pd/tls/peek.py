"""The server name (SNI) of a connection's ClientHello, read before the handshake.

The server must choose its TLS context (which certificates it trusts for
this client) before the handshake starts, from the client's first record,
without taking it off the socket: TLS then reads it as usual.  The record is
peeked at (MSG_PEEK) with the socket's receive low-water mark (SO_RCVLOWAT)
set to the bytes wanted, so that the wait for readability ends only once
they all arrived (or the client closed): a client that trickles its hello
byte by byte costs one wake-up per mark, not one per byte.  Nothing sits
between trio's SSLStream and the socket, so p2pd.tls.bodypump's direct
socket I/O stays as it was.  The caller's deadline (the handshake's) bounds
the wait; the record is bounded by TLS itself (16 KiB + 5 bytes).
"""

from __future__ import annotations

import socket

import trio

from p2pd.tls.clienthello import RECORD_HEADER, ClientHelloError, record_length, server_name


async def peek_server_name(stream: trio.abc.Stream) -> str | None:
    """The host name the client's ClientHello asks for, or None (none given).

    ClientHelloError if the first record is no ClientHello this reads, or the
    client closed first.  Streams other than a TCP socket's give None.
    """
    if not isinstance(stream, trio.SocketStream):
        return None
    sock = stream.socket
    try:
        header = await _peek(sock, RECORD_HEADER)
        record = await _peek(sock, RECORD_HEADER + record_length(header))
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
    return server_name(record)


async def _peek(sock: trio.socket.SocketType, size: int) -> bytes:
    """The first ``size`` bytes waiting on ``sock``, left there."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
    waited = False
    while True:
        try:
            data = await sock.recv(size, socket.MSG_PEEK)
        except OSError as exc:
            raise ClientHelloError(f"the connection failed before its ClientHello: {exc}") from None
        if len(data) >= size:
            return data
        if not data or waited:
            # Readable with fewer bytes than the mark: the client closed (a peek at
            # the same bytes again would spin until the deadline).
            raise ClientHelloError("the client closed the connection before its ClientHello")
        # Part of it: readable again only once ``size`` bytes wait (the low-water mark).
        await trio.lowlevel.wait_readable(sock)
        waited = True
