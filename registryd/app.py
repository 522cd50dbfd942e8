"""The registry's HTTP API (docs/protocol.md §3): routing, authentication, answers.

Transport-free: it turns a parsed ``Request`` into a ``Response`` and never
touches a socket, so the HTTP glue and the tests can drive it alike.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from urllib.parse import parse_qsl

from p2pcommon.http.connections import address_key
from p2pcommon.http.events import Request, Response, error_response, json_response
from p2pcommon.models import Lease
from p2pcommon.signing.member_proof import split_member_signature
from p2pcommon.signing.signer import MAX_SKEW, REPLAYED, AuthError, Signer
from registryd.answers import Action, Answer, Call, Unsigned, error
from registryd.guards import FailureLimiter, LoadShedder, NewMemberLimiter
from registryd.health import StoreHealth
from registryd.membership import Membership
from registryd.metrics import RegistryMetrics
from registryd.store import Store, StoreError
from registryd.table import Changes, Entry

log = logging.getLogger("registryd")

#: Seconds a client is told to wait while the store is away: the health probe
#: runs every second, so the registry answers again soon after the store does.
RETRY_AFTER = "2"


class RegistryApp:
    def __init__(
        self,
        signer: Signer,
        store: Store,
        metrics: RegistryMetrics,
        *,
        limiter: FailureLimiter | None = None,
        shedder: LoadShedder | None = None,
        newcomers: NewMemberLimiter | None = None,
        health: StoreHealth | None = None,
        clock: Callable[[], float] = time.time,
        scheme: str = "http",
    ) -> None:
        self._signer = signer
        self._store = store
        self._metrics = metrics
        # Not ``or``: an empty limiter has a length of 0, so it is falsy.
        self._limiter = FailureLimiter() if limiter is None else limiter
        self._shedder = LoadShedder() if shedder is None else shedder
        newcomers = NewMemberLimiter() if newcomers is None else newcomers
        self._members = Membership(store, metrics, newcomers, self.lease)
        self._clock = clock
        self._scheme = scheme
        # Shared with the WatchedStore in front of ``store``; a memory store never fails.
        self._health = health or StoreHealth()
        # path -> (methods, action); None marks the routes that need no signature.
        self._routes: dict[str, tuple[tuple[str, ...], Action | None]] = {
            "/register": (("POST",), self._members.register),
            "/heartbeat": (("POST",), self._members.heartbeat),
            "/leave": (("POST",), self._members.leave),
            # Every GET route answers HEAD with GET's head (docs/protocol.md §3.2).
            "/clients": (("GET", "HEAD"), self._clients),
            "/healthz": (("GET", "HEAD"), None),
            "/metrics": (("GET", "HEAD"), None),
        }
        # Bound once: looking a labelled child up is a measurable part of a heartbeat.
        self._latency = {route: metrics.latency.labels(route) for route in [*self._routes, "other"]}
        self._response_type = ("Content-Type", "application/json")
        # json.dumps with arguments builds an encoder per call.
        self._encode = json.JSONEncoder(separators=(",", ":")).encode
        #: (when, version, encoded clients) of the last full list answering ``since``.
        self._snapshot: tuple[float, int, bytes] | None = None

    def lease(self, version: int) -> Lease:
        ttl = self._store.ttl
        return Lease(ttl=ttl, heartbeat_interval=ttl / 3, version=version)

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        path = request.path
        route = self._routes.get(path)
        if route is None:
            response = error_response(404, "not found", f"no route {path}; see the README's API")
            path = "other"
        elif request.method not in route[0]:
            allowed = ", ".join(route[0])
            response = error_response(405, "method not allowed", f"{path} takes {allowed}")
            response.headers.append(("Allow", allowed))
        elif path == "/healthz":
            # The body stays: the HTTP layer sends only the head of a HEAD
            # answer, with the Content-Length GET's body has.
            response = self._healthz()
        elif path == "/metrics":
            response = await self._render_metrics()
        elif (retry := self._shedder.retry_after(request.in_progress)) is not None:
            # Before the signature check and the store: shedding must cost next to nothing.
            self._metrics.shed.inc()
            response = error_response(
                503,
                "overloaded",
                f"this registry has too many requests in progress; retry in {retry} s "
                "or use another registry",
                [("Retry-After", str(retry))],
            )
        else:
            action = route[1]
            assert action is not None
            try:
                response = await self._authenticated(request, action)
            except StoreError as exc:
                # Logged once per outage by the WatchedStore, not once per request here.
                response = error_response(
                    503,
                    "store unavailable",
                    f"the registry's store does not answer ({exc}); retry in a few seconds "
                    "or use another registry (its operator: check that Redis runs and is "
                    "reachable)",
                    [("Retry-After", RETRY_AFTER)],
                )
        self._latency[path].observe(time.perf_counter() - started)
        return response

    def _healthz(self) -> Response:
        health = self._health
        if health.available:
            return json_response(200, {"status": "ok"})
        return json_response(
            503,
            {
                "status": "unavailable",
                "error": "store unavailable",
                "reason": health.reason,
                "message": "the registry's store does not answer; this registry answers 503 "
                "until it does (check that Redis runs and is reachable)",
            },
            [("Retry-After", RETRY_AFTER)],
        )

    async def _render_metrics(self) -> Response:
        # Scrapes go on during an outage: the gauge keeps its last value then.
        with contextlib.suppress(StoreError):
            self._metrics.members.set(await self._store.count(self._clock()))
        self._metrics.store_up.set(1 if self._health.available else 0)
        body, content_type = self._metrics.render()
        return Response(200, body, [("Content-Type", content_type)])

    async def _authenticated(self, request: Request, action: Action) -> Response:
        now = self._clock()
        headers, member = request.headers, None
        if request.path == "/register":
            # The member's own signature is checked by the action, with the body's
            # certificate; ``sig`` is checked here as on every route.
            headers, member = split_member_signature(headers)
        try:
            # The whole target: @query and @request-target are derived from it.
            verified = self._signer.verify_request(
                request.method,
                request.target,
                headers,
                request.body,
                now=now,
                scheme=self._scheme,
            )
            expires = verified.created + MAX_SKEW + 1
            if not await self._store.remember_nonce(verified.nonce, expires, now):
                raise AuthError(REPLAYED)
        except AuthError as err:
            return self._refuse(request, err, now)
        try:
            answer = await action(Call(request, now, verified, member))
        except AuthError as err:  # a register whose member signature failed
            return self._refuse(request, err, now)
        except Unsigned as unsigned:
            return unsigned.response
        body = answer.raw if answer.raw is not None else self._encode(answer.payload).encode()
        # A HEAD answer has no content, so its Content-Digest is the empty
        # content's (RFC 9530 appendix B.2) and a client verifies it like any
        # answer; the HTTP layer sends only the head, with GET's Content-Length.
        content = b"" if request.method == "HEAD" else body
        signed = self._signer.sign_response(answer.status, content, nonce=verified.nonce, now=now)
        return Response(answer.status, body, [self._response_type, *signed.items()])

    def _refuse(self, request: Request, err: AuthError, now: float) -> Response:
        host = request.client_host
        # Counted per party: an IPv6 host has a whole /64 to try from.
        source = address_key(host)
        retry_after = self._limiter.retry_after(source, now)
        self._limiter.record_failure(source, now)
        self._metrics.auth_failures.labels(err.reason).inc()
        if retry_after is not None:
            self._metrics.rate_limited.inc()
            return error_response(
                429,
                "too many failures",
                f"too many refused requests from this address; retry in {retry_after} s",
                [("Retry-After", str(retry_after))],
            )
        log.info("refused %s %s from %s: %s", request.method, request.path, host, err)
        return error_response(401, err.reason, err.hint)

    # -- actions ----------------------------------------------------------

    async def _clients(self, call: Call) -> Answer:
        request, now = call.request, call.now
        since = _since(request.target)
        if isinstance(since, Answer):
            return since
        if since is not None and not 0 < since <= MAX_VERSION:
            # 0 (how a peer asks for its first list), negative or out of range:
            # the full list at once, from the snapshot when it is recent.
            return await self._full_list(since, now, None)
        changes = await self._store.changes_since(since, now)
        if since is not None and changes.full:
            return await self._full_list(since, now, changes)
        clients = [_record(m) for m in changes.members]
        if since is None:
            # Always fresh: other clients list right after registering.
            return Answer(200, {"clients": clients, "version": changes.version})
        return Answer(
            200,
            {
                "version": changes.version,
                # Echoed because the signature covers the path, not the query.
                "since": since,
                "full": changes.full,
                "clients": clients,
                "left": changes.left,
            },
        )

    async def _full_list(self, since: int, now: float, changes: Changes | None) -> Answer:
        """A ``full`` answer to ``since``, from a snapshot at most FULL_LIST_MAX_AGE old.

        Encoding every member is the costliest answer (≈ 8 µs a member), and
        peers that join together, or come back after a registry restart, ask
        for it together.  A snapshot is consistent with the version it
        carries, so a peer served an older one simply gets the newer changes
        at its next heartbeat.
        """
        snapshot = self._snapshot
        # Also when the store already answered ``changes``: encoding is the cost.
        if snapshot is not None and 0 <= now - snapshot[0] < FULL_LIST_MAX_AGE:
            version, listed = snapshot[1], snapshot[2]
        else:
            if changes is None:
                changes = await self._store.changes_since(None, now)
            version = changes.version
            listed = self._encode([_record(m) for m in changes.members]).encode()
            self._snapshot = (now, version, listed)
        head = self._encode({"version": version, "since": since, "full": True}).encode()
        return Answer(200, None, head[:-1] + b',"clients":' + listed + b',"left":[]}')


def _record(member: Entry) -> dict[str, object]:
    return {
        "id": member.id,
        "name": member.name,
        "addresses": list(member.addresses),
        "cert": member.cert,
        "last_seen": round(member.last_seen, 3),
    }


#: The largest ``since`` taken as a version; larger ones get the full list.
MAX_VERSION = 2**63 - 1
#: Seconds a full member list answering ``since`` may be reused.
FULL_LIST_MAX_AGE = 1.0
_SINCE_DIGITS = re.compile(r"-?[0-9]{1,30}")


def _since(target: str) -> int | None | Answer:
    """The ``since`` of ``GET /clients?since=V``: None without one, 400 if not an integer."""
    _, mark, query = target.partition("?")
    if not mark:
        return None
    values = [value for name, value in parse_qsl(query, keep_blank_values=True) if name == "since"]
    if not values:
        return None
    if len(values) > 1 or not _SINCE_DIGITS.fullmatch(values[0]):
        return error(400, "bad request", "query 'since': a membership version, one decimal integer")
    return int(values[0])
