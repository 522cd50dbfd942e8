"""Client of the registry API: signs requests, verifies answers, fails over.

Given several registry URLs, each call starts with the registry that last
answered well and moves on to the next on a transport error, a 5xx, a
refusal of our signature or an answer not signed with our secret.  Rounds
over all registries are separated by exponential backoff with full jitter.

A peer daemon calls ``spread(peer_id)`` so that peers do not all crowd the
first URL: each starts from a "home" registry derived from its id, and after
``DRIFT_BACK`` seconds elsewhere its next register or heartbeat tries home
first again, so that a registry back from an outage gets its share back.
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import trio
from pydantic import BaseModel

from p2pcommon.backoff import Backoff
from p2pcommon.http.client import (
    AnswerTooLarge,
    ClientConnection,
    ClosedWithoutAnswer,
    Head,
    HttpClientError,
    Origin,
    connect,
    tls_context,
)
from p2pcommon.models import (
    PEER_ID_PATTERN,
    Clients,
    Lease,
    Member,
    MemberPage,
    MemberRequest,
    RegisterRequest,
    Resolved,
)
from p2pcommon.registry_errors import InvalidAnswer as InvalidAnswer
from p2pcommon.registry_errors import ProofError as ProofError
from p2pcommon.registry_errors import RegistryError as RegistryError
from p2pcommon.registry_errors import RegistryRefused as RegistryRefused
from p2pcommon.registry_errors import RegistryUnavailable as RegistryUnavailable
from p2pcommon.registry_errors import UnknownMember as UnknownMember
from p2pcommon.registry_errors import WrongLease as WrongLease
from p2pcommon.registry_errors import check_page, error_fields, parse_answer, retry_after_seconds
from p2pcommon.signing.member_proof import MemberProver, RegisterProof
from p2pcommon.signing.signer import AuthError, Signer

Body = TypeVar("Body", bound=BaseModel)


#: Bytes of any answer (a member list of ~100 000 members fits).
MAX_ANSWER = 128 * 1024 * 1024
_PEER_ID = re.compile(PEER_ID_PATTERN)
#: Seconds on a registry other than the home one before home is tried first again.
DRIFT_BACK = 300.0
#: Seconds a kept-alive connection is reused: under registryd's default idle
#: timeout (30 s), so that it is rarely closed under us.
KEEPALIVE_EXPIRY = 25.0


def home_index(peer_id: str, count: int) -> int:
    """The registry a peer starts from: spread evenly and stable across restarts."""
    return int.from_bytes(hashlib.sha256(peer_id.encode()).digest()[:8], "big") % count


class _Registry:
    """Where one registry URL is, and its kept-alive connection."""

    def __init__(self, url: str) -> None:
        self.origin: Origin | None = None
        self.problem: str | None = None
        try:
            self.origin = Origin.of(url)
        except ValueError as exc:
            self.problem = str(exc)
        #: A connection that finished its last exchange, and until when it may be reused.
        self.idle: tuple[ClientConnection, float] | None = None

    @property
    def path(self) -> str:
        """The URL's path, which every route follows (a registry behind a prefix)."""
        return self.origin.path if self.origin is not None else ""


class RegistryClient:
    def __init__(
        self,
        urls: Sequence[str],
        secret: str,
        *,
        timeout: float = 5.0,
        verify: bool | ssl.SSLContext = True,
        clock: Callable[[], float] = time.time,
        backoff: Backoff | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("at least one registry URL is needed")
        self.urls = [url.rstrip("/") for url in urls]
        self._preferred = 0
        self._home: int | None = None
        # Since when calls have been served by a registry other than home.
        self._away_since: float | None = None
        self._monotonic = monotonic
        self._signer = Signer(secret)
        self._clock = clock
        self._backoff = backoff or Backoff(base=0.25, cap=10.0)
        self._registries = {url: _Registry(url) for url in self.urls}
        self._timeout = timeout
        self._verify = verify
        # Made on the first https:// exchange: loading a CA bundle costs memory.
        self._tls: ssl.SSLContext | None = None
        self._exchange_timeout = 3 * timeout

    @property
    def current_url(self) -> str:
        """The registry that answered last (or will be tried first)."""
        return self.urls[self._preferred]

    def spread(self, peer_id: str) -> None:
        """Start from, and drift back to, the registry derived from ``peer_id``."""
        self._home = self._preferred = home_index(peer_id, len(self.urls))
        self._away_since = None

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for registry in self._registries.values():
            if registry.idle is not None:
                connection, registry.idle = registry.idle[0], None
                await connection.aclose()

    # -- the API ----------------------------------------------------------

    async def register(
        self, request: RegisterRequest, prove: MemberProver, *, rounds: int = 1
    ) -> Lease:
        """Register (or renew the record), proving the key with ``prove`` (§2.4):
        the answer's ``lease`` is what heartbeats and the leave show."""
        payload = request.model_dump()
        proof = RegisterProof(request.id, prove)
        content = await self._call(
            "POST", "/register", payload, rounds=rounds, drift=True, proof=proof
        )
        return parse_answer(Lease, content, "lease")

    async def heartbeat(self, member_id: str, lease: str | None, *, rounds: int = 1) -> Lease:
        """Renew the lease ``lease`` (None: a registry older than leases gave none)."""
        payload = _member_body(member_id, lease)
        content = await self._call("POST", "/heartbeat", payload, rounds=rounds, drift=True)
        return parse_answer(Lease, content, "lease")

    async def leave(self, member_id: str, lease: str | None, *, rounds: int = 1) -> None:
        await self._call("POST", "/leave", _member_body(member_id, lease), rounds=rounds)

    async def clients(self, *, rounds: int = 1) -> list[Member]:
        """Every member (``GET /clients``); peers look members up instead."""
        content = await self._call("GET", "/clients", None, rounds=rounds)
        return parse_answer(Clients, content, "member list").clients

    async def member(self, member_id: str, *, rounds: int = 1) -> Member | None:
        """The live member ``member_id`` (docs/protocol.md §3.4), or None; ValueError for
        a string that is no peer id (the registry would answer 400)."""
        if _PEER_ID.fullmatch(member_id) is None:
            raise ValueError(f"not a peer id: {member_id[:60]!r}")
        try:
            content = await self._call("GET", f"/members/{member_id}", None, rounds=rounds)
        except UnknownMember:
            return None
        member = parse_answer(Member, content, "member record")
        if member.id != member_id:
            raise InvalidAnswer(f"the registry answered member {member.id!r} for {member_id!r}")
        return member

    async def resolve(self, text: str, *, rounds: int = 1) -> tuple[list[Member], bool]:
        """The members a PEER text may mean: named ``text``, or whose id starts with it
        (lowercased); at most 10, sorted by id, and whether there are more."""
        content = await self._call("GET", "/resolve/" + quote(text, safe=""), None, rounds=rounds)
        resolved = parse_answer(Resolved, content, "resolution")
        if resolved.query != text:
            raise InvalidAnswer(f"the registry resolved {resolved.query!r}, not {text!r}")
        return resolved.members, resolved.more

    async def members_page(
        self, after: str | None = None, limit: int = 500, *, certs: bool = True, rounds: int = 1
    ) -> tuple[list[Member], str | None]:
        """Members sorted by id after ``after`` (None: from the start), at most ``limit``
        (clamped to 1..1000), and the id to ask the next page after (None at the end).
        ``certs`` False: records without ``cert``, a fifth of the bytes.  InvalidAnswer
        unless the answer echoes the query (not signed) and keeps to it."""
        query = {"limit": str(limit), "certs": "1" if certs else "0"}
        if after:
            query = {"after": after, **query}
        content = await self._call("GET", "/members?" + urlencode(query), None, rounds=rounds)
        page = check_page(parse_answer(MemberPage, content, "member page"), after, limit, certs)
        return page.members, page.next

    # -- transport --------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        payload: Any,
        *,
        rounds: int,
        drift: bool = False,
        proof: RegisterProof | None = None,
    ) -> bytes:
        body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        self._backoff.reset()
        for round_number in range(rounds):
            if drift:
                self._drift_home()
            try:
                return await self._one_round(method, path, body, proof)
            except RegistryUnavailable:
                if round_number == rounds - 1:
                    raise
            await trio.sleep(self._backoff.next_delay())
        raise AssertionError("unreachable")

    def _drift_home(self) -> None:
        away = self._away_since
        if away is not None and self._monotonic() - away >= DRIFT_BACK:
            assert self._home is not None
            self._preferred = self._home

    async def _one_round(
        self, method: str, path: str, body: bytes, proof: RegisterProof | None
    ) -> bytes:
        failures: list[str] = []
        waits: list[float] = []
        count = len(self.urls)
        first = self._preferred
        for step in range(count):
            index = (first + step) % count
            url = self.urls[index]
            try:
                status, content = await self._exchange(url, method, path, body, proof)
            except _Failed as failed:
                failures.append(f"{url}: {failed}")
                if failed.retry_after is not None:
                    waits.append(failed.retry_after)
                continue
            self._answered_by(index, first)
            if status >= 400:
                error, message = error_fields(content)
                kind = RegistryRefused
                # A heartbeat's or a leave's 404 whatever its words; a lookup's says so.
                if status == 404 and (method == "POST" or error == "unknown member"):
                    kind = UnknownMember
                elif status == 403 and error == "wrong lease":
                    kind = WrongLease
                raise kind(status, error, message)
            return content
        raise RegistryUnavailable(failures, min(waits) if waits else None)

    def _answered_by(self, index: int, first: int) -> None:
        self._preferred = index
        if self._home is None or index == self._home:
            self._away_since = None
        elif self._away_since is None or first == self._home:
            # Just left home (again): the time away counts from now.
            self._away_since = self._monotonic()

    async def _exchange(
        self, url: str, method: str, path: str, body: bytes, proof: RegisterProof | None
    ) -> tuple[int, bytes]:
        registry = self._registries[url]
        try:
            # The connection's timeouts bound each wait; this bounds the whole
            # exchange, and the body is read with a cap: whatever answers at a
            # registry's URL is unauthenticated until its signature is checked.
            with trio.fail_after(self._exchange_timeout):
                connection, reused = await self._connection(registry)
                try:
                    nonce, head, content = await self._send(
                        connection, registry, method, path, body, proof
                    )
                except ClosedWithoutAnswer:
                    if not reused:
                        raise
                    # The registry closed the kept-alive connection meanwhile (not
                    # a timeout: a silent registry costs one wait, then failover): a
                    # fresh one, and a fresh signature (the nonce may have been seen).
                    connection, _ = await self._connection(registry, fresh=True)
                    nonce, head, content = await self._send(
                        connection, registry, method, path, body, proof
                    )
        except HttpClientError as exc:
            raise _Failed(str(exc)) from None
        except trio.TooSlowError:
            raise _Failed(f"no whole answer within {self._exchange_timeout:g} s") from None
        status = head.status
        if status in (401, 429) or status >= 500:
            error, message = error_fields(content)
            raise _Failed(
                f"{status} {error}: {message}".rstrip(": "),
                retry_after_seconds(head.header("retry-after")),
            )
        try:
            self._signer.verify_response(
                status, head.fields, content, nonce=nonce, now=self._clock()
            )
        except AuthError as exc:
            raise _Failed(f"answer not signed with our secret ({exc}); ignored") from None
        return status, content

    async def _send(
        self,
        connection: ClientConnection,
        registry: _Registry,
        method: str,
        path: str,
        body: bytes,
        proof: RegisterProof | None,
    ) -> tuple[str, Head, bytes]:
        """One signed request on ``connection``; kept for reuse if it ends cleanly."""
        target = registry.path + path
        headers, nonce = self._signer.sign_request(method, target, body, now=self._clock())
        if body:
            headers["Content-Type"] = "application/json"
        try:
            if proof is not None:
                await proof.sign(method, target, headers, nonce)
            head = await connection.request(method, registry.path + path, headers, body)
            content = await connection.body(MAX_ANSWER)
        except AnswerTooLarge:
            await connection.aclose()
            raise _Failed(f"the answer is larger than {MAX_ANSWER} bytes") from None
        except BaseException:
            # Cancelled (a deadline) or failed: the connection is in an unknown state.
            with trio.CancelScope(shield=True):
                await connection.aclose()
            raise
        if connection.reusable and registry.idle is None:
            registry.idle = (connection, trio.current_time() + KEEPALIVE_EXPIRY)
        else:
            await connection.aclose()
        return nonce, head, content

    async def _connection(
        self, registry: _Registry, *, fresh: bool = False
    ) -> tuple[ClientConnection, bool]:
        """Its kept-alive connection if one is live (and whether it was), else a new one."""
        origin = registry.origin
        if origin is None:
            raise HttpClientError(registry.problem or "not a URL")
        if registry.idle is not None:
            connection, expires = registry.idle
            registry.idle = None
            if not fresh and trio.current_time() < expires:
                return connection, True
            await connection.aclose()
        tls = None
        if origin.tls:
            if self._tls is None:
                self._tls = tls_context(self._verify)
            tls = self._tls
        stream = await connect(origin.host, origin.port, tls=tls, connect_timeout=self._timeout)
        connection = ClientConnection(
            stream,
            name="the registry",
            host=origin.netloc,
            read_timeout=self._timeout,
            write_timeout=self._timeout,
        )
        return connection, False


def _member_body(member_id: str, lease: str | None) -> dict[str, str]:
    if lease is None:
        return {"id": member_id}
    return MemberRequest(id=member_id, lease=lease).model_dump()


class _Failed(Exception):
    """One registry failed one exchange; the next one is tried."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
