"""The peer-to-peer server (docs/protocol.md §4): the share over HTTP/1.1 and mutual TLS.

Only members get in: the TLS handshake accepts certificates of the network
CA, and of a foreign member that named itself by SNI (its id, looked up
before the handshake: p2pd.tls.peek, p2pd.tls.contexts.ServerContexts); every
request is checked with the registry (p2pd.membership.directory, answers kept
one heartbeat interval): a certificate of the CA that is no member's, or a
member that left, gets 403, on a kept-alive connection too.
Only indexed files are served; targets are validated before any lookup.
"""

from __future__ import annotations

import errno
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import trio

from p2pcommon.http.events import Request, Response, error_response
from p2pcommon.http.server import HttpServer, Limits
from p2pd.membership.directory import Directory, LookupUnavailable
from p2pd.peer.body import NO_BODY, FileBody
from p2pd.peer.files import (
    FILES_PREFIX,
    LAYERS_PREFIX,
    BadTarget,
    NotShared,
    decode_file_target,
    digest_of,
    file_etag,
    if_range_holds,
    none_match,
    parse_range,
    repr_digest,
)
from p2pd.peer.handshake import Handshakes
from p2pd.peer.ratelimit import TokenBucket
from p2pd.peer.search import SEARCH_PATH
from p2pd.peer.search_route import SearchRoute
from p2pd.peer.slots import UploadSlots
from p2pd.peer.uploads import BUSY, MIN_UPLOAD_RATE, PACE_WINDOW, UploadPace
from p2pd.share.index import FileEntry
from p2pd.share.merkle import piece_count
from p2pd.share.safeopen import FileChanged
from p2pd.share.watching import Share
from p2pd.tls.contexts import ServerContexts

log = logging.getLogger("p2pd.server")

#: Bodies up to this size are read when the file is opened (in the same worker thread).
READ_AHEAD = 256 * 1024
#: Seconds a request waits for an upload slot before 503.
SLOT_WAIT = 2.0
#: Listing entries encoded at a time (~3 ms) before the event loop runs again.
LISTING_SLICE = 2000
#: Piece layers read from the hash cache at once (each a short SQLite read).
LAYER_READS = 4


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
        directory: Directory,
        contexts: ServerContexts,
        *,
        upload_slots: int,
        rate_limit: int,
        limits: Limits | None = None,
        min_upload_rate: int = MIN_UPLOAD_RATE,
        pace_window: float = PACE_WINDOW,
    ) -> None:
        self._share = share
        self._directory = directory
        self._contexts = contexts
        self.slots = UploadSlots(upload_slots)
        self.upload_slots = upload_slots
        #: The pace floor (p2pd/peer/uploads.py): bytes/s over ``pace_window`` seconds; 0: none.
        self.min_upload_rate = min_upload_rate
        self.pace_window = pace_window
        self.bucket = TokenBucket(rate_limit) if rate_limit else None
        self.stats = UploadStats()
        self.handshakes = Handshakes(directory, contexts, self.stats.refused)
        self.http = HttpServer(
            self.handle, limits or Limits(max_body_bytes=0), admit=self.handshakes.admit
        )
        self.search = SearchRoute(
            lambda: share.index.listing(), lambda: self.generation, refused=self.stats.refused
        )
        self._listing_cache: ListingBody | None = None
        self._listing_lock = trio.Lock()
        self._layer_reads = trio.CapacityLimiter(LAYER_READS)
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

    async def handle(self, request: Request) -> Response:
        try:
            admitted = await self._directory.is_member(request.client_id)
        except LookupUnavailable as exc:
            self.stats.refused["membership unknown"] += 1
            return error_response(
                503,
                "membership unknown",
                f"{exc}; retry shortly",
                [("Retry-After", "5")],
            )
        if not admitted:
            self.stats.refused["not a member"] += 1
            return error_response(403, "not a member", "this certificate is not a current member")
        if request.method not in ("GET", "HEAD"):
            return error_response(
                405, "method not allowed", "only GET and HEAD", [("Allow", "GET, HEAD")]
            )
        path = request.path
        if path == "/files":
            return await self._listing(request)
        if path == SEARCH_PATH:
            # A member is admitted, so client_id is its peer id: the rate limit's key.
            return await self.search.answer(
                request.target, request.client_id or request.client_host
            )
        prefix = LAYERS_PREFIX if path.startswith(LAYERS_PREFIX) else FILES_PREFIX
        if not path.startswith(prefix):
            return error_response(
                404,
                "not found",
                "the routes are /files, /files/<path>, /layers/<path> and /search",
            )
        try:
            relative = decode_file_target(request.target, prefix)
        except BadTarget as exc:
            return error_response(400, "bad target", str(exc))
        except NotShared:
            return error_response(404, "not found", "no such file in this share")
        entry = self._share.index.get(relative)
        if entry is None:
            return error_response(404, "not found", "no such file in this share")
        if prefix == LAYERS_PREFIX:
            return await self._layer(request, entry)
        return await self._file(request, entry)

    async def _layer(self, request: Request, entry: FileEntry) -> Response:
        """The piece layer of an indexed file: 32 bytes a piece, Repr-Digest over them.

        404 for a file of one piece or none (its root is its piece's hash);
        503 while the hash cache cannot give it (a damaged row is hashed again).
        Small (64 KiB for 1 GiB): no upload slot, a bounded number read at once.
        """
        if not entry.root or not entry.piece_size or piece_count(entry.size, entry.piece_size) < 2:
            return error_response(
                404,
                "no piece layer",
                "this file has one piece or none: check it against the root it is listed with",
            )
        async with self._layer_reads:
            layer = await trio.to_thread.run_sync(self._share.piece_layer, entry)
        if layer is None:
            self._share.nudge()
            return error_response(
                503,
                "no piece layer now",
                "this file's piece layer cannot be read now; it is being hashed again, retry "
                "shortly",
                [("Retry-After", "5")],
            )
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("ETag", file_etag(entry.sha256)),
            ("Repr-Digest", digest_of(layer)),
        ]
        if request.method == "HEAD":
            return Response(200, headers=headers, stream=NO_BODY, length=len(layer))
        return Response(200, layer, headers)

    def release_slot(self, member: str) -> None:
        self.slots.release(member)

    def too_slow(self, pace: UploadPace, now: float) -> str | None:
        """Why an upload is ended for its pace now (p2pd/peer/uploads.py), or None."""
        if self.min_upload_rate <= 0 or not self.slots.contended(now, self.pace_window):
            return None
        rate = pace.rate(now)
        if rate is None or rate >= self.min_upload_rate:
            return None
        return (
            f"it read {rate / 1024:.1f} KiB/s over the last {self.pace_window:g} s, under the "
            f"{self.min_upload_rate / 1024:g} KiB/s an upload must keep while others wait "
            "for a slot"
        )

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
        member = request.client_id or request.client_host
        refusal = await self.slots.acquire(member, SLOT_WAIT)
        if refusal is not None:
            return self._busy(refusal, member)
        # A small body is read by the thread that opens the file: one hop, and the
        # HTTP layer sends it with the head in one write.
        ahead = length if length <= READ_AHEAD else 0
        try:
            handle, ready = await trio.to_thread.run_sync(
                self._share.open_and_read, entry, first, ahead
            )
        except OSError as exc:
            self.slots.release(member)
            return self._open_failed(entry, exc)
        except BaseException:
            self.slots.release(member)
            raise
        body = FileBody(self, member, handle, first, length, ready, what=entry.path)
        if body.direct:
            headers.append(("Connection", "close"))
        return Response(status, headers=headers, stream=body, length=length)

    def _busy(self, refusal: str, member: str) -> Response:
        """503, saying whether every slot is taken or only those this member may have."""
        slots = self.slots
        if refusal == BUSY:
            self.stats.refused_busy += 1
            message = f"all {slots.total} upload slots are in use; retry shortly"
        else:
            self.stats.refused[refusal] += 1
            message = (
                f"this member has {slots.held_by(member)} of the {slots.total} upload slots, "
                f"and the free ones are kept for other members (one member may hold "
                f"{slots.member_share} while others may want them); retry when one of its "
                "uploads ends"
            )
        return error_response(503, refusal, message, [("Retry-After", "5")])

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


def status_fields(server: PeerServer) -> dict[str, Any]:
    return {
        "upload_slots": server.upload_slots,
        "uploads_active": server.stats.active,
        "upload_rate_limit": server.bucket.rate if server.bucket else 0,
        "served_bytes": server.stats.served_bytes,
    }
