"""Large bodies moved by worker threads instead of the trio thread.

Receiving a download: through trio, each TLS record costs a trip through
the event loop and h11, and hashing in another thread costs a GIL hand-off
per block: profiled, the receiver spent more CPU on that shuttling than on
decrypting, hashing and writing together.  Here one thread owns the socket
for the body: it reads the socket in large pieces, decrypts straight into
preallocated blocks, writes each block at its offset and hands it to a
second thread that hashes it.  Both steps release the GIL (SSL_read,
pwrite, SHA-256), so decrypt + write overlap with hashing on another core.
Blocks come back through a small ring, which bounds memory (RING_BLOCKS ×
BLOCK) and paces the reader to the hasher.  Body bytes are not copied by
Python code (only the little h11 had buffered past the head).

The trio side waits for both threads (``p2pd.tls.workers``) and, every
PROGRESS_EVERY seconds, reports what arrived (``on_chunk`` may raise to end
the attempt).  A cancellation sets ``stop``, which the threads look at at
least every POLL_SLICE seconds: ``p2pctl cancel`` and shutdown end a
transfer within a second, as before.

Sending an upload: one thread reads the file into a reused 512 KiB buffer
with pread, encrypts it as one TLS write and sends it.
"""

from __future__ import annotations

import errno
import functools
import os
import queue
import select
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import trio

from p2pd.tls.workers import in_threads

#: Bodies from this size on are moved by worker threads (a thread costs ~0.1 ms to
#: start; below this, trio's path is as fast).
DIRECT_MIN = 1024 * 1024
#: One block: decrypted into, written, hashed, then reused.
BLOCK = 1024 * 1024
#: Blocks in flight between the two threads (memory held: RING_BLOCKS × BLOCK).
RING_BLOCKS = 3
#: File reads, each sent as one TLS write (32 records).
SEND_BLOCK = 512 * 1024
#: Socket reads: several TLS records at once.
SOCKET_READ = 256 * 1024
#: How often the threads look at ``stop`` while they wait.
POLL_SLICE = 0.2


_T = TypeVar("_T")


class BodyCut(Exception):
    """The member's connection failed or ended before the body was complete."""


class Stopped(Exception):
    """``stop`` was set: the attempt is being cancelled."""


@dataclass
class RawTLS:
    """What the threads need of an established TLS connection (blocking use only)."""

    socket_fd: int
    ssl_object: ssl.SSLObject
    incoming: ssl.MemoryBIO
    outgoing: ssl.MemoryBIO


@dataclass
class DirectBody:
    """A response body taken over from the HTTP layer: what it had buffered, then the rest."""

    tls: RawTLS
    buffered: list[bytes]
    #: Bytes still to come from the connection after ``buffered``.
    remaining: int
    #: Seconds the member may stay silent.
    read_timeout: float

    @property
    def length(self) -> int:
        """The whole body's length: what will be written."""
        return self.remaining + sum(map(len, self.buffered))


class _Reader:
    """The socket side: decrypt the body into blocks (one thread)."""

    def __init__(self, body: DirectBody, stop: threading.Event) -> None:
        self._tls = body.tls
        self._buffered = [memoryview(piece) for piece in body.buffered if piece]
        self._left = body.remaining + sum(map(len, self._buffered))
        self._timeout = body.read_timeout
        self._stop = stop
        self._raw = bytearray(SOCKET_READ)
        #: Plaintext bytes received so far (read by the trio thread for progress).
        self.received = 0

    @property
    def left(self) -> int:
        return self._left

    def fill(self, view: memoryview) -> int:
        """Fill ``view`` with the next body bytes (fewer only at the body's end)."""
        want = min(len(view), self._left)
        filled = 0
        while self._buffered and filled < want:
            piece = self._buffered[0]
            count = min(len(piece), want - filled)
            view[filled : filled + count] = piece[:count]
            filled += count
            self.received += count
            if count == len(piece):
                self._buffered.pop(0)
            else:
                self._buffered[0] = piece[count:]
        ssl_object = self._tls.ssl_object
        while filled < want:
            try:
                # With a buffer, read() returns a count (typeshed says bytes).
                count = cast(int, ssl_object.read(want - filled, view[filled:want]))
            except ssl.SSLWantReadError:
                self._send_pending()
                self._receive()
                continue
            except ssl.SSLZeroReturnError:
                count = 0
            except ssl.SSLError as exc:
                raise BodyCut(f"broke off TLS mid-answer ({exc})") from None
            if not count:
                raise BodyCut("closed the connection mid-answer")
            filled += count
            self.received += count
        self._left -= filled
        return filled

    def _receive(self) -> None:
        """Move what the socket has into the TLS object; wait for it, bounded."""
        fd = self._tls.socket_fd
        silent_since = time.monotonic()
        while True:
            try:
                count = os.readv(fd, [self._raw])
            except BlockingIOError:
                _wait(fd, select.POLLIN, silent_since, self._timeout, self._stop)
                continue
            except OSError as exc:
                raise BodyCut(f"closed the connection mid-answer ({exc.strerror or exc})") from None
            if count == 0:
                # Without close_notify the next read raises SSLEOFError: cut short.
                self._tls.incoming.write_eof()
            else:
                with memoryview(self._raw) as view:
                    self._tls.incoming.write(view[:count])
            return

    def _send_pending(self) -> None:
        """Answer what TLS itself asks to send meanwhile (a key update)."""
        if self._tls.outgoing.pending:
            _send_all(self._tls, self._timeout, self._stop)


def _wait(fd: int, event: int, since: float, timeout: float, stop: threading.Event) -> None:
    """Wait a slice for ``event`` on ``fd``; Stopped, or BodyCut once ``timeout`` passed."""
    if stop.is_set():
        raise Stopped
    if time.monotonic() - since >= timeout:
        if event == select.POLLIN:
            raise BodyCut(f"sent nothing for {timeout:g} s")
        raise BodyCut(f"read less than {SEND_BLOCK // 1024} KiB in {timeout:g} s")
    poll = select.poll()
    poll.register(fd, event)
    poll.poll(POLL_SLICE * 1000)


def _send_all(tls: RawTLS, timeout: float, stop: threading.Event) -> None:
    """Send what the TLS object has written, all of it within ``timeout``.

    One deadline for the whole (at most SEND_BLOCK and its records): a
    client that takes a few bytes now and then cannot hold an upload.
    """
    with memoryview(tls.outgoing.read()) as data:
        sent, since = 0, time.monotonic()
        while sent < len(data):
            try:
                sent += os.write(tls.socket_fd, data[sent:])
            except BlockingIOError:
                _wait(tls.socket_fd, select.POLLOUT, since, timeout, stop)
            except OSError as exc:
                raise BodyCut(f"closed the connection mid-body ({exc.strerror or exc})") from None


class _Ring:
    """Blocks going round between the reader and the hasher."""

    def __init__(self, stop: threading.Event) -> None:
        self.free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(RING_BLOCKS):
            self.free.put(bytearray(BLOCK))
        #: (block, length), or None once the reader is done.
        self.filled: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
        self._stop = stop

    def take_free(self) -> bytearray:
        if self._stop.is_set():  # once per block: a fast sender never makes us wait
            raise Stopped
        return self._take(self.free)

    def take_filled(self) -> tuple[bytearray, int] | None:
        """The next block to hash; None once the reader is done, or if it never ran
        (stopped while it waited for its thread)."""
        try:
            return self._take(self.filled)
        except Stopped:
            return None

    def _take(self, source: queue.SimpleQueue[_T]) -> _T:
        while True:
            try:
                return source.get(timeout=POLL_SLICE)
            except queue.Empty:
                if self._stop.is_set():
                    raise Stopped from None


def _read_and_write(reader: _Reader, ring: _Ring, fd: int, offset: int) -> None:
    try:
        at = offset
        while reader.left:
            block = ring.take_free()
            with memoryview(block) as view:
                count = reader.fill(view)
                written = 0
                while written < count:
                    written += os.pwrite(fd, view[written:count], at + written)
            at += count
            ring.filled.put((block, count))
        os.fsync(fd)
    except Stopped:
        pass  # whoever set stop (a cancellation, the hasher) has the reason
    finally:
        ring.filled.put(None)


def _hash(ring: _Ring, digest: Any, stop: threading.Event) -> None:
    try:
        while (item := ring.take_filled()) is not None:
            block, count = item
            with memoryview(block) as view:
                digest.update(view[:count])
            ring.free.put(block)
    finally:
        stop.set()  # the reader need not go on if hashing failed; harmless once it is done


class _Counter:
    """Bytes a worker thread has moved, read by the trio thread for progress."""

    done = 0


def _send_file(
    tls: RawTLS,
    file_fd: int,
    offset: int,
    length: int,
    timeout: float,
    stop: threading.Event,
    sent: _Counter,
) -> None:
    block = bytearray(min(SEND_BLOCK, length))
    try:
        with memoryview(block) as view:
            while sent.done < length:
                if stop.is_set():  # a fast client never makes the socket wait
                    raise Stopped
                want = min(len(view), length - sent.done)
                count = os.preadv(file_fd, [view[:want]], offset + sent.done)
                if not count:
                    raise OSError(errno.EIO, "the file shrank while being served")
                try:
                    tls.ssl_object.write(view[:count])
                except ssl.SSLError as exc:
                    raise BodyCut(f"broke off TLS mid-body ({exc})") from None
                _send_all(tls, timeout, stop)
                sent.done += count
    except Stopped:
        pass  # a cancellation, whose reason trio has


async def receive_direct(
    body: DirectBody,
    fd: int,
    offset: int,
    digest: Any,
    *,
    on_chunk: Callable[[int], None],
) -> None:
    """Write ``body`` into the open file ``fd`` at ``offset``, hashing it into ``digest``,
    then fsync.

    Exactly the body's length is read from the connection (what the caller
    checked against the listing), never a byte more.  Raises BodyCut when
    the member fails mid-body, OSError for the file, and whatever
    ``on_chunk`` raises.
    """
    stop = threading.Event()
    reader = _Reader(body, stop)
    ring = _Ring(stop)
    await in_threads(
        [
            functools.partial(_read_and_write, reader, ring, fd, offset),
            functools.partial(_hash, ring, digest, stop),
        ],
        stop,
        lambda: reader.received,
        on_chunk,
        lambda: reader.left == 0,
    )


async def send_direct(
    tls: RawTLS,
    file_fd: int,
    offset: int,
    length: int,
    *,
    stall_limit: float,
    on_sent: Callable[[int], None],
) -> None:
    """Send ``length`` bytes of the file from ``offset`` over ``tls``, from a worker thread.

    Large TLS writes from a reused buffer.  BodyCut when the client goes away
    or reads nothing for ``stall_limit`` seconds, OSError for the file.
    """
    stop = threading.Event()
    sent = _Counter()
    await in_threads(
        [functools.partial(_send_file, tls, file_fd, offset, length, stall_limit, stop, sent)],
        stop,
        lambda: sent.done,
        on_sent,
        lambda: sent.done == length,
    )


def raw_tls(stream: object) -> RawTLS | None:
    """The parts of a trio.SSLStream over a socket, or None.

    They are trio's private attributes (as in ``tls.refuse_handshake``); if
    a trio release renames them, callers fall back to the stream's own API.
    """
    if not isinstance(stream, trio.SSLStream):
        return None
    transport = stream.transport_stream
    ssl_object = getattr(stream, "_ssl_object", None)
    incoming = getattr(stream, "_incoming", None)
    outgoing = getattr(stream, "_outgoing", None)
    if not (
        isinstance(transport, trio.SocketStream)
        and isinstance(ssl_object, ssl.SSLObject)
        and isinstance(incoming, ssl.MemoryBIO)
        and isinstance(outgoing, ssl.MemoryBIO)
    ):
        return None
    return RawTLS(transport.socket.fileno(), ssl_object, incoming, outgoing)
