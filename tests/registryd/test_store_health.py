"""Store health without processes: the pure state, the watched store, the app, the census loop."""

from __future__ import annotations

import json
import logging

import pytest
import trio
import trio.testing

from p2pcommon.http.events import Request
from p2pcommon.signing.signer import Signer
from registryd.app import RegistryApp
from registryd.health import StoreHealth
from registryd.metrics import RegistryMetrics
from registryd.pace import Pace
from registryd.server import _census_loop
from registryd.store import MemoryStore, Registered, StoreError
from registryd.watched_store import WatchedStore
from tests.support import SECRET, Peer

REFUSED = "redis: Error 111 connecting to 127.0.0.1:6379. Connection refused."


class FlakyStore(MemoryStore):
    """A memory store that fails like a dead Redis while ``down``, counting the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.calls = 0
        self.expire_bug: Exception | None = None

    def _check(self) -> None:
        self.calls += 1
        if self.down:
            raise StoreError(REFUSED)

    async def register(
        self,
        id: str,
        name: str,
        cert: str,
        addresses: tuple[str, ...],
        now: float,
        *,
        ttl: float,
        lease_hash: str,
        allow_new: bool = True,
    ) -> Registered:
        self._check()
        return await super().register(
            id, name, cert, addresses, now, ttl=ttl, lease_hash=lease_hash, allow_new=allow_new
        )

    async def remember_nonce(self, nonce: str, expires_at: float, now: float) -> bool:
        self._check()
        return await super().remember_nonce(nonce, expires_at, now)

    async def count(self, now: float) -> int:
        self._check()
        return await super().count(now)

    async def expire(self, now: float) -> list[str]:
        if self.expire_bug is not None:
            bug, self.expire_bug = self.expire_bug, None
            raise bug
        self._check()
        return await super().expire(now)


# -- StoreHealth ------------------------------------------------------------


def test_one_change_per_outage_whatever_the_number_of_failures() -> None:
    health = StoreHealth()
    assert health.failed("refused", started=1.0, now=1.1)
    assert not health.failed("timeout", started=1.2, now=1.3)
    assert (health.available, health.reason, health.since) == (False, "timeout", 1.1)
    assert health.succeeded(started=3.0, now=3.1) == pytest.approx(2.0)
    assert health.succeeded(started=3.2, now=3.3) is None
    assert (health.available, health.reason) == (True, "")


def test_a_call_that_began_before_a_change_does_not_undo_it() -> None:
    health = StoreHealth()
    assert health.failed("refused", started=5.0, now=6.0)
    # Began while the store still answered, finished after the outage was seen.
    assert health.succeeded(started=4.0, now=6.5) is None
    assert not health.available
    assert health.succeeded(started=7.0, now=7.5) is not None
    # Began during the outage, failed after the recovery was seen.
    assert not health.failed("refused", started=7.2, now=8.0)
    assert health.available


# -- WatchedStore and the app ------------------------------------------------


def signed(
    method: str,
    path: str,
    payload: object = None,
    *,
    secret: str = SECRET,
    member: Peer | None = None,
) -> Request:
    body = b"" if payload is None else json.dumps(payload).encode()
    headers, nonce = Signer(secret).sign_request(method, path, body, now=0.0)
    if member is not None:
        member.add_proof(headers, method, path, nonce)
    return Request(
        method,
        path,
        [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        body,
        "192.0.2.7",
    )


def plain(method: str, path: str) -> Request:
    return Request(method, path, [], b"", "192.0.2.7")


@pytest.fixture
def flaky() -> FlakyStore:
    return FlakyStore()


@pytest.fixture
def watched(flaky: FlakyStore) -> WatchedStore:
    return WatchedStore(flaky, StoreHealth(), name="redis://127.0.0.1:6379")


@pytest.fixture
def app(watched: WatchedStore) -> RegistryApp:
    metrics = RegistryMetrics()
    return RegistryApp(Signer(SECRET), watched, metrics, health=watched.health, clock=lambda: 0.0)


async def test_while_the_store_is_away_signed_routes_and_healthz_say_503(
    app: RegistryApp, watched: WatchedStore, flaky: FlakyStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "registryd")
    peer = Peer.new()
    body = {"id": peer.id, "name": "p", "cert": peer.cert, "port": 7070}
    flaky.down = True

    first = await app.handle(signed("POST", "/register", body, member=peer))
    assert first.status == 503
    assert ("Retry-After", "2") in first.headers
    payload = json.loads(first.body)
    assert payload["error"] == "store unavailable"
    assert "Connection refused" in payload["message"]

    # Known down: the next requests fail at once, without a call to the store.
    calls = flaky.calls
    for _ in range(10):
        assert (await app.handle(signed("GET", "/clients"))).status == 503
    assert flaky.calls == calls

    health = await app.handle(plain("GET", "/healthz"))
    assert health.status == 503
    assert json.loads(health.body)["reason"] == REFUSED
    # HEAD gets GET's answer; the HTTP layer sends its head only (tests/registryd/test_head.py).
    head = await app.handle(plain("HEAD", "/healthz"))
    assert (head.status, head.body) == (503, health.body)
    # No signature needs no store: still 401, not 503.
    assert (await app.handle(plain("GET", "/clients"))).status == 401
    metrics = await app.handle(plain("GET", "/metrics"))
    assert metrics.status == 200
    assert b"registry_store_up 0.0" in metrics.body

    flaky.down = False
    await watched.expire(0.0)  # the probe: reaches the store whatever the state
    assert (await app.handle(plain("GET", "/healthz"))).status == 200
    assert (await app.handle(signed("POST", "/register", body, member=peer))).status == 200

    messages = [r.getMessage() for r in caplog.records]
    assert sum("unavailable (" in m for m in messages) == 1
    assert sum("reachable again" in m for m in messages) == 1


async def test_healthz_answers_head_and_refuses_other_methods(app: RegistryApp) -> None:
    head = await app.handle(plain("HEAD", "/healthz"))
    get = await app.handle(plain("GET", "/healthz"))
    # GET's answer: the HTTP layer sends its head only (tests/registryd/test_head.py).
    assert (head.status, head.body, head.headers) == (200, get.body, get.headers)
    post = await app.handle(plain("POST", "/healthz"))
    assert post.status == 405
    assert ("Allow", "GET, HEAD") in post.headers


# -- the census loop (c) -------------------------------------------------------


async def test_the_census_loop_outlives_store_errors_and_bugs(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "registryd")
    flaky = FlakyStore()
    watched = WatchedStore(flaky, StoreHealth(), name="redis://x", clock=trio.current_time)
    metrics = RegistryMetrics()
    peer = Peer.new()
    # Long expired by time.time().
    await flaky.register(peer.id, "p", peer.cert, (), now=0.0, ttl=10.0, lease_hash="5e" * 32)
    flaky.down = True
    pace = Pace()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_census_loop, watched, metrics, pace, 1.0)
        await trio.sleep(30)  # thirty rounds against a dead store
        assert not watched.health.available
        flaky.expire_bug = RuntimeError("a bug in one round")
        flaky.down = False
        await trio.sleep(30)
        assert watched.health.available
        nursery.cancel_scope.cancel()
    assert metrics.registry.get_sample_value("registry_expiries_total") == 1
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unavailable (" in m for m in messages) == 1
    assert any("census failed: RuntimeError: a bug in one round" in m for m in messages)
    assert (pace.members, pace.processes) == (0, 1)  # counted again once the store answered
