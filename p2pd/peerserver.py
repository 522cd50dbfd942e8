"""The peer-to-peer server (docs/protocol.md §4): the share over HTTP/1.1 and mutual TLS.

Only members get in: the TLS handshake accepts certificates of the network
CA and of the current foreign members (p2pd.tls.ServerContexts), and every
request is checked against the member list: a certificate of the CA that is
no member's, or a member that left, gets 403, on a kept-alive connection too.
Only indexed files are served; targets are validated before any lookup.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import trio

from p2pcommon.httpserver import (
    HttpServer,
    Limits,
    Request,
    Response,
    error_response,
)
from p2pd.bodypump import DIRECT_MIN, BodyCut, raw_tls, send_direct
from p2pd.filehttp import (
    FILES_PREFIX,
    BadTarget,
    NotShared,
    decode_file_target,
    file_etag,
    if_range_holds,
    none_match,
    parse_range,
    repr_digest,
)
from p2pd.index import FileEntry
from p2pd.members import Members
from p2pd.ratelimit import TokenBucket
from p2pd.safeopen import FileChanged
from p2pd.share import Share
from p2pd.tls import PeerMismatch, ServerContexts, presented_id, refuse_handshake

log = logging.getLogger("p2pd.server")

CHUNK = 1024 * 1024
#: Bodies up to this size are read when the file is opened (in the same worker thread).
READ_AHEAD = 256 * 1024
#: Bodies sent by worker threads go in segments of this size: between
#: segments, a rate limit set meanwhile takes effect.
DIRECT_SEGMENT = 64 * 1024 * 1024
#: Seconds a request waits for an upload slot before 503.
SLOT_WAIT = 2.0
HANDSHAKE_TIMEOUT = 10.0
#: Listing entries encoded at a time (~3 ms) before the event loop runs again.
LISTING_SLICE = 2000


@dataclass(frozen=True)
class ListingBody:
    """The encoded listing of one generation; ``files_at``: where its array starts."""

    generation: int
    body: bytes
    files_at: int


@dataclass
class UploadStats:
    active: int = 0
    served_bytes: int = 0
    served_files: int = 0
    refused_busy: int = 0
    listings_served: int = 0
    #: Connections or requests refused, by reason (for metrics).
    refused: Counter[str] = field(default_factory=Counter)


class PeerServer:
    def __init__(
        self,
        share: Share,
        members: Members,
        contexts: ServerContexts,
        *,
        upload_slots: int,
        rate_limit: int,
        limits: Limits | None = None,
    ) -> None:
        self._share = share
        self._members = members
        self._contexts = contexts
        # The trust store follows the member list by its changes, from what it holds now.
        contexts.apply(members.unordered(), ())
        members.add_listener(contexts.apply)
        self._slots = trio.Semaphore(upload_slots)
        self.upload_slots = upload_slots
        self.bucket = TokenBucket(rate_limit) if rate_limit else None
        self.stats = UploadStats()
        self.http = HttpServer(self.handle, limits or Limits(max_body_bytes=0), admit=self._admit)
        self._listing_cache: ListingBody | None = None
        self._listing_lock = trio.Lock()
        # Listed generation = this start's time in µs + the index's changes.
        # The index counts from 0 on each start: alone, a restarted member
        # would reuse "1", "2", … for other listings, and a cached listing
        # would get a false 304.  This rises across restarts unless there were
        # more changes than µs between starts or the clock went back, and is
        # exact in any JSON parser (< 2**53) until the year 2255.
        self._epoch = time.time_ns() // 1000

    @property
    def generation(self) -> int:
        """The generation peers see in the listing and its ETag."""
        return self._epoch + self._share.index.generation

    def set_rate_limit(self, rate: int) -> None:
        """Applies to every upload from its next chunk (a large body: its next 64 MiB segment)."""
        self.bucket = TokenBucket(rate) if rate else None

    async def _admit(self, stream: trio.abc.Stream) -> tuple[trio.abc.Stream, str | None] | None:
        context = self._contexts.current()
        tls = trio.SSLStream(stream, context, server_side=True)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                await tls.do_handshake()
            peer_id = presented_id(tls)
        except (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            trio.TooSlowError,
            PeerMismatch,
        ) as exc:
            log.info("refused a TLS handshake: %s", exc.__cause__ or exc or "too slow")
            self.stats.refused["handshake"] += 1
            if isinstance(exc.__cause__, ssl.SSLError):
                # OpenSSL wrote an alert saying why (no certificate, unknown
                # CA, protocol version): send it rather than a bare close.
                await refuse_handshake(tls)
            else:
                await trio.aclose_forcefully(tls)
            return None
        return tls, peer_id

    async def handle(self, request: Request) -> Response:
        if not self._members.is_member(request.client_id):
            self.stats.refused["not a member"] += 1
            return error_response(403, "not a member", "this certificate is not a current member")
        if request.method not in ("GET", "HEAD"):
            return error_response(
                405, "method not allowed", "only GET and HEAD", [("Allow", "GET, HEAD")]
            )
        path = request.path
        if path == "/files":
            return await self._listing(request)
        if not path.startswith(FILES_PREFIX):
            return error_response(404, "not found", "the routes are /files and /files/<path>")
        try:
            relative = decode_file_target(request.target)
        except BadTarget as exc:
            return error_response(400, "bad target", str(exc))
        except NotShared:
            return error_response(404, "not found", "no such file in this share")
        entry = self._share.index.get(relative)
        if entry is None:
            return error_response(404, "not found", "no such file in this share")
        return await self._file(request, entry)

    def release_slot(self) -> None:
        self._slots.release()

    async def _listing(self, request: Request) -> Response:
        self.stats.listings_served += 1
        etag = f'"{self.generation}"'
        if none_match(request.header(b"if-none-match"), etag):
            return Response(304, headers=[("ETag", etag)])
        cached = await self._listing_body()
        etag = f'"{cached.generation}"'  # the one built: the share may have changed meanwhile
        return Response(200, cached.body, [("Content-Type", "application/json"), ("ETag", etag)])

    async def listing_files_json(self) -> memoryview:
        """The listing's "files" array as JSON: what `p2pctl shared` shows (no copy)."""
        cached = await self._listing_body()
        return memoryview(cached.body)[cached.files_at : -1]

    async def _listing_body(self) -> ListingBody:
        """``GET /files``'s body for the current generation, built once per generation.

        Built LISTING_SLICE entries at a time with the event loop running in
        between: a share of a million files takes a second or more to encode,
        and a stalled loop is a daemon the watchdog kills.  One build at a
        time; those who ask meanwhile wait for it.
        """
        async with self._listing_lock:
            generation = self.generation
            cached = self._listing_cache
            if cached is not None and cached.generation == generation:
                return cached
            # The index's sorted list is replaced on change, never modified: it
            # stays the listing of ``generation`` while this runs.
            entries = self._share.index.listing()
            head = b'{"generation":%d,"files":' % generation
            pieces = [head, b"["]
            for start in range(0, len(entries), LISTING_SLICE):
                chunk = [entry.to_json() for entry in entries[start : start + LISTING_SLICE]]
                encoded = json.dumps(chunk, separators=(",", ":")).encode()[1:-1]
                pieces.append(b"," + encoded if start else encoded)
                await trio.lowlevel.checkpoint()
            pieces.append(b"]}")
            cached = ListingBody(generation, b"".join(pieces), len(head))
            self._listing_cache = cached
            return cached

    async def _file(self, request: Request, entry: FileEntry) -> Response:
        etag = file_etag(entry.sha256)
        # RFC 9110 §13.2.2: If-None-Match is evaluated before Range.  No disk
        # access: the answer carries no byte of the file.
        if none_match(request.header(b"if-none-match"), etag):
            return Response(304, headers=[("ETag", etag)])
        headers = [
            ("ETag", etag),
            ("Repr-Digest", repr_digest(entry.sha256)),
            ("Accept-Ranges", "bytes"),
        ]
        first, last, status = 0, entry.size - 1, 200
        range_header = request.header(b"range")
        if_range = request.header(b"if-range")
        if if_range is not None and not if_range_holds(if_range, etag):
            range_header = None  # the client's part is of other bytes: send them all
        if range_header is not None and entry.size > 0:
            try:
                chosen = parse_range(range_header.decode("latin-1"), entry.size)
            except ValueError:
                return error_response(
                    416,
                    "range not satisfiable",
                    f"the file has {entry.size} bytes",
                    [("Content-Range", f"bytes */{entry.size}"), *headers],
                )
            if chosen is not None:
                first, last = chosen
                status = 206
                headers.append(("Content-Range", f"bytes {first}-{last}/{entry.size}"))
        length = last - first + 1 if entry.size else 0
        headers.insert(0, ("Content-Type", "application/octet-stream"))
        if request.method == "HEAD":
            return await self._head(entry, status, headers, length)
        acquired = False
        with trio.move_on_after(SLOT_WAIT):
            await self._slots.acquire()
            acquired = True
        if not acquired:
            self.stats.refused_busy += 1
            return error_response(
                503, "busy", "all upload slots are in use; retry shortly", [("Retry-After", "5")]
            )
        # A small body is read by the thread that opens the file: one hop, and the
        # HTTP layer sends it with the head in one write.
        ahead = length if length <= READ_AHEAD else 0
        try:
            handle, ready = await trio.to_thread.run_sync(
                self._share.open_and_read, entry, first, ahead
            )
        except OSError as exc:
            self._slots.release()
            return self._open_failed(entry, exc)
        except BaseException:
            self._slots.release()
            raise
        body = FileBody(self, handle, first, length, ready)
        if body.direct:
            headers.append(("Connection", "close"))
        return Response(status, headers=headers, stream=body, length=length)

    async def _head(
        self, entry: FileEntry, status: int, headers: list[tuple[str, str]], length: int
    ) -> Response:
        """GET's head without the body: no upload slot, the file opened only to check it.

        The open makes HEAD answer 404/503 exactly when GET would (the file
        vanished or changed); the handle is closed before answering.
        """
        try:
            handle = await trio.to_thread.run_sync(self._share.open_entry, entry)
        except OSError as exc:
            return self._open_failed(entry, exc)
        handle.close()
        return Response(status, headers=headers, stream=NO_BODY, length=length)

    def _open_failed(self, entry: FileEntry, exc: OSError) -> Response:
        """The answer when the indexed file cannot be opened as indexed."""
        # The index is stale: never serve what is there now, and have it rescanned.
        self._share.nudge()
        if isinstance(exc, FileChanged):
            log.info("not serving %s: %s", entry.path, exc)
            return error_response(
                503,
                "file changing",
                "the file changed since it was indexed; retry shortly",
                [("Retry-After", "1")],
            )
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            log.info("not serving %s: %s", entry.path, exc.strerror or exc)
            return error_response(404, "not found", "no such file in this share")
        log.warning("cannot serve %s: %s", entry.path, exc.strerror or exc)
        return error_response(
            503,
            "cannot read",
            "the file cannot be read now; retry later",
            [("Retry-After", "5")],
        )


class _NoBody:
    """The empty body of a HEAD answer: its Content-Length is GET's, no byte follows."""

    def __aiter__(self) -> _NoBody:
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration


NO_BODY = _NoBody()


class FileBody:
    """The bytes of one upload; holds an upload slot and the open file until closed.

    The HTTP layer calls ``aclose`` whether or not the body was sent, so the
    slot is returned even when the client vanishes before the first byte.
    """

    def __init__(
        self, server: PeerServer, handle: BinaryIO, offset: int, length: int, ready: bytes = b""
    ) -> None:
        self._server = server
        #: Bytes from ``offset`` read already (the whole body of a small file).
        self._ready = ready
        #: The whole body is in memory: the HTTP layer may send it with the head.
        self.in_memory = 0 < len(ready) == length
        self._handle = handle
        self._offset = offset
        self._remaining = length
        self._closed = False
        #: Sent by worker threads (the answer then says Connection: close).
        self.direct = length >= DIRECT_MIN
        server.stats.active += 1

    def __aiter__(self) -> FileBody:
        return self

    async def __anext__(self) -> bytes:
        if self._remaining <= 0:
            self._server.stats.served_files += 1
            raise StopAsyncIteration
        size = min(CHUNK, self._remaining)
        bucket = self._server.bucket
        if bucket is not None:
            await bucket.take(size)
        if self._ready:
            chunk, self._ready = self._ready, b""
        else:
            chunk = await trio.to_thread.run_sync(
                os.pread, self._handle.fileno(), size, self._offset
            )
        if not chunk:
            raise OSError(f"{self._handle.name} shrank while being served")
        self._sent(len(chunk))
        return chunk

    async def send_itself(self, stream: trio.abc.Stream, stall_limit: float) -> bool:
        """Send the whole body here, not through h11; False if it cannot (not a large
        body over a TLS socket).

        Segments go from worker threads (p2pd/bodypump.py) while no rate limit
        applies; while one does, pieces paced by ``__anext__`` go on the stream
        (a limit set meanwhile takes effect at the next segment).  The answer
        said ``Connection: close``: h11 does not see these bytes.
        """
        tls = raw_tls(stream) if self.direct else None
        if tls is None:
            return False
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
        self._server.stats.served_files += 1
        return True

    def _sent(self, count: int) -> None:
        self._offset += count
        self._remaining -= count
        self._server.stats.served_bytes += count

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._server.stats.active -= 1
            self._server.release_slot()
            self._handle.close()


def status_fields(server: PeerServer) -> dict[str, Any]:
    return {
        "upload_slots": server.upload_slots,
        "uploads_active": server.stats.active,
        "upload_rate_limit": server.bucket.rate if server.bucket else 0,
        "served_bytes": server.stats.served_bytes,
    }
