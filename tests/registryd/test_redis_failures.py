"""RedisStore on a dead or silent Redis: StoreError, quickly, from every call."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import redis

from registryd.redis_store import RedisStore
from registryd.store import StoreError
from tests.support import free_port


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose connections the kernel completes and nobody ever answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield int(server.getsockname()[1])


async def test_every_call_on_a_refused_port_is_a_store_error() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0")
    now = time.time()
    calls = [
        store.register("a" * 52, "n", "cert", (), now, ttl=30.0, lease_hash="5e" * 32),
        store.renew("a" * 52, now, ttl=30.0, lease_hash="5e" * 32),
        store.leave("a" * 52, now, lease_hash="5e" * 32),
        store.expire(now),
        store.get("a" * 52, now),
        store.resolve("n", "a", now),
        store.page("", now, limit=10, certs=False),
        store.members(now),
        store.count(now),
        store.processes(now),
        store.remember_nonce("nonce", now + 60, now),
        store.ping(),
    ]
    for call in calls:
        with pytest.raises(StoreError, match="Connection refused"):
            await call
    await store.aclose()


async def test_a_silent_redis_fails_a_call_within_seconds(silent_port: int) -> None:
    store = RedisStore(f"redis://127.0.0.1:{silent_port}/0")
    started = time.monotonic()
    with pytest.raises(StoreError, match="redis: "):
        await store.remember_nonce("nonce", time.time() + 60, time.time())
    assert time.monotonic() - started < 8  # the 2 s read timeout, once: no retries
    await store.aclose()


async def test_socket_errors_that_redis_py_lets_through_are_store_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0")

    def broken() -> bool:
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(store._redis, "ping", broken)
    with pytest.raises(StoreError, match="Connection reset by peer"):
        await store.ping()
    await store.aclose()


def test_a_client_error_while_building_is_a_store_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> redis.Redis:
        raise redis.ConnectionError("cannot build")

    monkeypatch.setattr(redis.Redis, "from_url", refuse)
    with pytest.raises(StoreError, match="cannot build"):
        RedisStore("redis://127.0.0.1:1/0")


def test_timeouts_are_short_and_redis_py_does_not_retry() -> None:
    store = RedisStore("redis://127.0.0.1:1/0")
    kwargs = store._redis.connection_pool.connection_kwargs
    assert 0 < kwargs["socket_connect_timeout"] <= 3
    assert 0 < kwargs["socket_timeout"] <= 3
    assert kwargs["retry"].get_retries() == 0
