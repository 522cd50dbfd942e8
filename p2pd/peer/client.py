"""The downloader's side of the peer protocol: HTTP/1.1 over mutual TLS with h11.

A connection is made to one member: its certificate from the registry is the
only trust anchor, and the presented certificate's hash must be the member's
id (docs/protocol.md §1).  Addresses are tried in the order the registry lists them.
"""

from __future__ import annotations

import logging
import ssl
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import contextmanager

import trio
from pydantic import ValidationError

from p2pcommon.http.client import ClientConnection, Head, HttpClientError
from p2pcommon.memory import release_free_memory
from p2pcommon.models import Member, split_host_port, validation_reason
from p2pcommon.service import one_line
from p2pd.peer.listing import IN_THREAD_MAX, MemberListing
from p2pd.peer.listing_child import ChildOutputError, InvalidBody, check_in_child
from p2pd.peer.reach import unreachable_message
from p2pd.tls.bodypump import DIRECT_MIN, DirectBody
from p2pd.tls.contexts import PeerMismatch, client_context, presented_id
from p2pd.tls.identity import Identity
from p2pd.tls.stream import BatchedTLSStream

log = logging.getLogger("p2pd.peerclient")

CONNECT_TIMEOUT = 5.0
#: Seconds a member may stay silent while we wait for bytes, or stop reading ours.
READ_TIMEOUT = 20.0
WRITE_TIMEOUT = 20.0
#: Seconds a whole listing exchange may take (a member dribbling bytes is cut off).
LISTING_TIMEOUT = 30.0
RECEIVE_SIZE = 256 * 1024
#: A listing of ~400 000 files; more is refused rather than held in memory.
MAX_LISTING = 64 * 1024 * 1024
#: Listings kept for revalidation by ETag (the members used most recently), and
#: the memory they may take together (p2pd.peer.listing: about the size of each body).
MAX_CACHED_LISTINGS = 32
LISTING_CACHE_BUDGET = 64 * 1024 * 1024
#: Seconds to check a large listing (a child process; ~3 s for 64 MiB), waiting
#: for one included; and how many such children run at once (each holds a
#: parse of several times the body's size for those seconds).
CHECK_TIMEOUT = 60.0
CHECKS_AT_ONCE = 1
#: Client contexts kept (the members connected to most recently): each holds our key.
MAX_CLIENT_CONTEXTS = 64


class PeerUnavailable(Exception):
    """The member cannot give us what we asked now; the message says why, in a user's
    words.  Which of the three below it was matters to what is tried next."""


class PeerUnreachable(PeerUnavailable):
    """No address of the member answered with the member's certificate, or the
    connection failed (or timed out) during the exchange."""


class PeerRefused(PeerUnavailable):
    """The member answered with an error status (``status``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class InvalidListing(PeerUnavailable):
    """A member answered GET /files with something that is not a valid listing."""


@contextmanager
def _unreachable() -> Iterator[None]:
    """The HTTP client's errors, as what they mean here: the member cannot be used now."""
    try:
        yield
    except HttpClientError as exc:
        raise PeerUnreachable(str(exc)) from None


class PeerConnection:
    """One kept-alive connection to one member; requests run one at a time."""

    def __init__(
        self, member: Member, stream: BatchedTLSStream, receive_size: int = RECEIVE_SIZE
    ) -> None:
        self.member = member
        self._tls = stream
        self._http = ClientConnection(
            stream,
            name=member.name,
            host="peer",
            read_timeout=READ_TIMEOUT,
            write_timeout=WRITE_TIMEOUT,
            receive_size=receive_size,
        )

    @classmethod
    async def open(
        cls,
        identity: Identity,
        member: Member,
        context: ssl.SSLContext | None = None,
        *,
        receive_size: int = RECEIVE_SIZE,
    ) -> PeerConnection:
        """A connection to ``member``; ``receive_size``: the buffer each read fills (a
        waiting read holds it: small for many small answers at once, as a search asks)."""
        context = context or client_context(identity, member.cert)
        failures: list[tuple[str, BaseException]] = []
        for address in member.addresses:
            tcp: trio.SocketStream | None = None
            try:
                host, port = split_host_port(address)
                with trio.fail_after(CONNECT_TIMEOUT):
                    tcp = await trio.open_tcp_stream(host, port)
                    # Our id as SNI: a server picks the context that trusts a
                    # self-signed member's certificate by it (docs/protocol.md §1).
                    tls = BatchedTLSStream(tcp, context, server_hostname=identity.id)
                    # The request follows at once (every use of a connection
                    # begins with one): our Finished goes out with it.
                    await tls.do_handshake(hold_last_flight=True)
                if presented_id(tls) != member.id:
                    raise PeerMismatch(f"{address} presented another member's certificate")
                tcp = None  # handed over to the connection
                return cls(member, tls, receive_size)
            except (
                OSError,
                ValueError,
                trio.TooSlowError,
                trio.BrokenResourceError,
                PeerMismatch,
            ) as exc:
                failures.append((address, exc))
            finally:
                if tcp is not None:
                    await trio.aclose_forcefully(tcp)
        raise PeerUnreachable(unreachable_message(member.name, failures, CONNECT_TIMEOUT))

    @property
    def reusable(self) -> bool:
        """Between requests: fresh, or the last exchange completed on both sides."""
        return self._http.reusable

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, target: str, headers: dict[str, str] | None = None) -> Head:
        """Send a GET and read the answer's head; read the body with ``body()``."""
        with _unreachable():
            return await self._http.request("GET", target, headers or {})

    async def body_chunks(self) -> AsyncIterator[bytes]:
        with _unreachable():
            async for chunk in self._http.body_chunks():
                yield chunk

    def take_body(self, head: Head) -> DirectBody | None:
        """A large body framed by Content-Length, handed over for ``bodypump.receive_direct``.

        None for anything else (read it with ``body_chunks``).  What h11 has
        buffered comes along; the connection cannot be reused afterwards.
        """
        length = head.header("content-length") or ""
        if not length.isdigit() or int(length) < DIRECT_MIN or head.header("transfer-encoding"):
            return None
        with _unreachable():
            buffered = self._http.detach_body()
        remaining = int(length) - sum(map(len, buffered))
        return DirectBody(self._tls.raw(), buffered, remaining, READ_TIMEOUT)

    async def body(self, limit: int) -> bytes:
        with _unreachable():
            return await self._http.body(limit)


class PeerPool:
    """Kept-alive connections per member, and each member's last listing by ETag.

    Small transfers are dominated by TCP and TLS set-up; reusing a connection
    and answering a listing with 304 make them cheap.  A pooled connection the
    member closed meanwhile is replaced once, transparently.
    """

    def __init__(self, identity: Identity, max_idle_per_member: int = 16) -> None:
        self._identity = identity
        self._max_idle = max_idle_per_member
        self._idle: dict[str, list[PeerConnection]] = {}
        # The most recently used members' listings, for If-None-Match, within a budget.
        self._listings: OrderedDict[str, tuple[str, MemberListing]] = OrderedDict()
        self._listings_bytes = 0
        self._checks = trio.CapacityLimiter(CHECKS_AT_ONCE)
        # Building a context loads our key and the member's certificate: do it once
        # per member used lately, not for every member there ever was.
        self._contexts: OrderedDict[str, ssl.SSLContext] = OrderedDict()

    @property
    def identity(self) -> Identity:
        """Our identity, presented to every member."""
        return self._identity

    def _open(self, member: Member) -> Awaitable[PeerConnection]:
        context = self._contexts.get(member.cert)
        if context is None:
            try:
                context = client_context(self._identity, member.cert)
            except (ssl.SSLError, ValueError) as exc:
                raise PeerUnreachable(
                    f"{member.name}'s certificate from the registry is unusable: {exc}"
                ) from None
            self._contexts[member.cert] = context
            while len(self._contexts) > MAX_CLIENT_CONTEXTS:
                self._contexts.popitem(last=False)
        self._contexts.move_to_end(member.cert)
        return PeerConnection.open(self._identity, member, context)

    def cached_listings(self) -> list[tuple[str, MemberListing]]:
        """(member id, listing) for every listing kept, most recently used last; no I/O."""
        return [(member_id, listing) for member_id, (_, listing) in self._listings.items()]

    @property
    def cached_bytes(self) -> int:
        """Memory the kept listings hold: within LISTING_CACHE_BUDGET, or the newest alone."""
        return self._listings_bytes

    async def acquire(self, member: Member) -> tuple[PeerConnection, bool]:
        """A connection to ``member`` and whether it was reused."""
        idle = self._idle.get(member.id, [])
        while idle:
            connection = idle.pop()
            if connection.member.cert == member.cert and connection.reusable:
                return connection, True
            await connection.aclose()
        return await self._open(member), False

    def idle(self, member_id: str) -> int:
        """How many kept-alive connections to the member wait for reuse."""
        return len(self._idle.get(member_id, []))

    async def release(self, connection: PeerConnection) -> None:
        idle = self._idle.setdefault(connection.member.id, [])
        if connection.reusable and len(idle) < self._max_idle:
            idle.append(connection)
        else:
            await connection.aclose()

    async def request(
        self, member: Member, target: str, headers: dict[str, str] | None = None
    ) -> tuple[PeerConnection, Head]:
        """Send a GET on a pooled connection; the caller reads the body, then releases."""
        connection, reused = await self.acquire(member)
        try:
            return connection, await connection.request(target, headers)
        except PeerUnreachable:
            await connection.aclose()
            if not reused:
                raise
        except BaseException:  # cancelled (a deadline): the connection is in an unknown state
            await connection.aclose()
            raise
        # The member closed the kept-alive connection meanwhile: one fresh try.
        connection = await self._open(member)
        try:
            return connection, await connection.request(target, headers)
        except BaseException:
            await connection.aclose()
            raise

    async def listing(self, member: Member) -> MemberListing:
        """GET /files from ``member``, validated, revalidated by ETag.

        PeerUnreachable if it does not answer in time, PeerRefused for an
        error status, InvalidListing for an answer that is not a listing.
        """
        cached = self._listings.get(member.id)
        headers = {"If-None-Match": cached[0]} if cached else {}
        if cached:
            self._listings.move_to_end(member.id)
        try:
            with trio.fail_after(LISTING_TIMEOUT):
                connection, head = await self.request(member, "/files", headers)
                try:
                    body = await connection.body(MAX_LISTING)
                except BaseException:
                    await connection.aclose()
                    raise
        except trio.TooSlowError:
            raise PeerUnreachable(
                f"{member.name} did not send its listing within {LISTING_TIMEOUT:g} s"
            ) from None
        await self.release(connection)
        if head.status == 304 and cached is not None:
            return cached[1]
        if head.status == 403:
            raise PeerRefused(
                403,
                f"{member.name} does not count this daemon as a member (yet): members look "
                "each other up at the registry and keep the answer a heartbeat interval, so "
                "after a registry restart or a new register this passes by itself; try "
                "again in a few seconds",
            )
        if head.status != 200:
            text = one_line(body[:200].decode("utf-8", "replace"), 200)
            raise PeerRefused(head.status, f"{member.name} answered {head.status}: {text}")
        large = len(body) > IN_THREAD_MAX
        listing = await self._checked(member, body)
        del body
        self._keep(member.id, head.headers.get("etag"), listing)
        if large:
            # Tens of MiB freed in pieces (the body, a listing the budget let
            # go): glibc would keep them as the daemon's for as long as it runs.
            release_free_memory()
        return listing

    async def _checked(self, member: Member, body: bytes) -> MemberListing:
        """The body as a valid listing (docs/protocol.md §4.2), checked off the event loop.

        A small body in a worker thread; a large one in a child process:
        pydantic holds the interpreter's lock for the whole parse, seconds for
        tens of MiB, which in a thread would stall the loop all the same.
        """
        if len(body) <= IN_THREAD_MAX:
            try:
                return await trio.to_thread.run_sync(MemberListing.validated, body)
            except ValidationError as exc:
                raise InvalidListing(
                    f"{member.name} sent an invalid listing: {validation_reason(exc)}"
                ) from None
        size = f"{len(body) / 2**20:.0f} MiB"
        listing = None
        with trio.move_on_after(CHECK_TIMEOUT):
            async with self._checks:
                try:
                    listing = await check_in_child(body)
                except InvalidBody as exc:
                    raise InvalidListing(f"{member.name} sent an invalid listing: {exc}") from None
                except ChildOutputError as exc:
                    log.warning("checking %s's listing (%s) failed: %s", member.name, size, exc)
                    raise PeerUnreachable(
                        f"{member.name}'s listing ({size}) could not be checked: the checking "
                        "process failed (see the log)"
                    ) from None
        if listing is None:
            raise PeerUnreachable(
                f"{member.name}'s listing ({size}) could not be checked within "
                f"{CHECK_TIMEOUT:g} s: this host is busy; try again later"
            )
        return listing

    def _keep(self, member_id: str, etag: str | None, listing: MemberListing) -> None:
        """Keep the listing for If-None-Match, within MAX_CACHED_LISTINGS and the budget:
        the least recently used go first.  The newest is kept even alone over the
        budget (a listing is at most MAX_LISTING): asked again, it is a 304."""
        old = self._listings.pop(member_id, None)
        if old is not None:
            self._listings_bytes -= old[1].nbytes
        if not etag:
            return
        self._listings[member_id] = (etag, listing)
        self._listings_bytes += listing.nbytes
        while len(self._listings) > 1 and (
            len(self._listings) > MAX_CACHED_LISTINGS or self._listings_bytes > LISTING_CACHE_BUDGET
        ):
            _, (_, evicted) = self._listings.popitem(last=False)
            self._listings_bytes -= evicted.nbytes

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                await connection.aclose()
        self._idle.clear()
