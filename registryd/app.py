"""The registry's HTTP API (docs/protocol.md §3): routing, authentication, answers.

Transport-free: it turns a parsed ``Request`` into a ``Response`` and never
touches a socket, so the HTTP glue and the tests can drive it alike.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from p2pcommon.http.connections import address_key
from p2pcommon.http.events import Request, Response, error_response, json_response
from p2pcommon.signing.member_proof import split_member_signature
from p2pcommon.signing.signer import MAX_SKEW, REPLAYED, AuthError, Signer
from registryd.answers import Action, Call, Unsigned
from registryd.guards import FailureLimiter, LoadShedder, LookupLimiter, NewMemberLimiter
from registryd.health import StoreHealth
from registryd.lookups import MEMBER_PREFIX, RESOLVE_PREFIX, Lookups
from registryd.membership import Membership
from registryd.metrics import RegistryMetrics
from registryd.pace import Pace
from registryd.store import Store, StoreError

log = logging.getLogger("registryd")

#: Seconds a client is told to wait while the store is away: the health probe
#: runs every second, so the registry answers again soon after the store does.
RETRY_AFTER = "2"


@dataclass(frozen=True)
class Route:
    methods: tuple[str, ...]
    #: None for the routes that need no signature.
    action: Action | None = None
    #: Limited per source before the signature is checked (``LookupLimiter``).
    lookup: bool = False


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
        lookups: LookupLimiter | None = None,
        pace: Pace | None = None,
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
        self._lookup_limiter = LookupLimiter() if lookups is None else lookups
        self.pace = Pace() if pace is None else pace
        self._members = Membership(store, metrics, newcomers, self.pace)
        self._clock = clock
        self._scheme = scheme
        # Shared with the WatchedStore in front of ``store``; a memory store never fails.
        self._health = health or StoreHealth()
        # json.dumps with arguments builds an encoder per call.
        self._encode = json.JSONEncoder(separators=(",", ":")).encode
        finder = Lookups(store, metrics, self._encode)
        # Every GET route answers HEAD with GET's head (docs/protocol.md §3.2).
        reads = ("GET", "HEAD")
        # By path; the two with a parameter in the path by their prefix.
        self._routes: dict[str, Route] = {
            "/register": Route(("POST",), self._members.register),
            "/heartbeat": Route(("POST",), self._members.heartbeat),
            "/leave": Route(("POST",), self._members.leave),
            "/members": Route(reads, finder.page, lookup=True),
            MEMBER_PREFIX + "{id}": Route(reads, finder.member, lookup=True),
            RESOLVE_PREFIX + "{text}": Route(reads, finder.resolve, lookup=True),
            "/clients": Route(reads, finder.clients, lookup=True),
            "/healthz": Route(reads),
            "/metrics": Route(reads),
        }
        # Bound once: looking a labelled child up is a measurable part of a heartbeat.
        self._latency = {route: metrics.latency.labels(route) for route in [*self._routes, "other"]}
        self._response_type = ("Content-Type", "application/json")

    def _route(self, path: str) -> tuple[str, Route | None]:
        """The route's name (its metric label) and the route; ("other", None) if none."""
        route = self._routes.get(path)
        if route is not None:
            return path, route
        for prefix, name in ((MEMBER_PREFIX, "{id}"), (RESOLVE_PREFIX, "{text}")):
            if path.startswith(prefix):
                return prefix + name, self._routes[prefix + name]
        return "other", None

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        path, route = self._route(request.path)
        if route is None:
            response = error_response(
                404, "not found", f"no route {request.path[:100]}; see the README's API"
            )
        elif request.method not in route.methods:
            allowed = ", ".join(route.methods)
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
        elif route.lookup and (retry := self._lookup_retry(request)) is not None:
            self._metrics.lookups_limited.inc()
            response = error_response(
                429,
                "too many lookups",
                f"this address looked members up too often lately; retry in {retry} s",
                [("Retry-After", str(retry))],
            )
        else:
            action = route.action
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

    def _lookup_retry(self, request: Request) -> int | None:
        """None if the request's source may look up now (a token taken), else the wait."""
        source, now = address_key(request.client_host), self._clock()
        if self._lookup_limiter.try_take(source, now):
            return None
        return self._lookup_limiter.retry_after(source, now)

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
        pace = self.pace
        self._metrics.heartbeat_interval.set(pace.interval(pace.members))
        self._metrics.processes.set(pace.processes)
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
