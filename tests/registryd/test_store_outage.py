"""registryd on a Redis that is absent, dies or hangs: it stays up, says 503, recovers.

Real processes: registryd as the CLI starts it, and a real redis-server
started, killed, paused and started again on one port by the test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from p2pcommon.registry_client import RegistryClient
from p2pcommon.signing.signer import Signer
from tests.redis_process import RedisProcess
from tests.support import SECRET, Peer, RunningRegistry, run_registryd, wait_until


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    process = RedisProcess(tmp_path)
    try:
        yield process
    finally:
        process.stop()


async def signed(
    http: httpx.AsyncClient,
    registry: RunningRegistry,
    method: str,
    path: str,
    payload: object,
    member: Peer | None = None,
) -> httpx.Response:
    """A request signed as p2pd signs it; with ``member``, its register proof too."""
    body = b"" if payload is None else json.dumps(payload).encode()
    headers, nonce = Signer(SECRET).sign_request(method, path, body, now=time.time())
    if member is not None:
        member.add_proof(headers, method, path, nonce)
    return await http.request(method, registry.url + path, content=body, headers=headers)


def register_body(peer: Peer) -> dict[str, object]:
    return {"id": peer.id, "name": peer.name, "cert": peer.cert, "port": 7070}


async def healthz_becomes(http: httpx.AsyncClient, registry: RunningRegistry, status: int) -> None:
    async def check() -> bool:
        return (await http.get(registry.url + "/healthz")).status_code == status

    await wait_until(check, what=f"/healthz to answer {status}")


def assert_store_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["Retry-After"]) > 0
    body = response.json()
    assert body["error"] == "store unavailable"
    assert "Redis" in body["message"]


def unavailable_lines(registry: RunningRegistry, redis: RedisProcess) -> int:
    needle = f"store redis://127.0.0.1:{redis.port} unavailable"
    return sum(needle in line for line in registry.log().splitlines())


async def test_starts_without_redis_and_recovers_when_it_comes(
    tmp_path: Path, redis_process: RedisProcess
) -> None:
    peer = Peer.new()
    with run_registryd(tmp_path, {"REGISTRYD_STORE": redis_process.url}) as registry:
        async with httpx.AsyncClient(timeout=30) as http:
            await healthz_becomes(http, registry, 503)
            health = await http.get(registry.url + "/healthz")
            assert health.json()["error"] == "store unavailable"
            assert "Connection refused" in health.json()["reason"]
            head = await http.head(registry.url + "/healthz")
            assert (head.status_code, head.content) == (503, b"")

            for _ in range(5):  # many requests, one log line
                assert_store_unavailable(
                    await signed(http, registry, "POST", "/register", register_body(peer), peer)
                )
            assert_store_unavailable(await signed(http, registry, "GET", "/clients", None))
            metrics = await http.get(registry.url + "/metrics")
            assert metrics.status_code == 200
            assert "registry_store_up 0.0" in metrics.text

            redis_process.start()
            await healthz_becomes(http, registry, 200)
            registered = await signed(
                http, registry, "POST", "/register", register_body(peer), peer
            )
            assert registered.status_code == 200, registered.text
            async with RegistryClient([registry.url], SECRET) as client:
                assert [m.id for m in await client.clients()] == [peer.id]
            assert "registry_store_up 1.0" in (await http.get(registry.url + "/metrics")).text
        assert registry.process.poll() is None
        assert unavailable_lines(registry, redis_process) == 1
        assert "reachable again" in registry.log()
        assert "Traceback" not in registry.log()
    assert registry.process.returncode == 0


async def test_redis_dying_under_a_running_registry(
    tmp_path: Path, redis_process: RedisProcess
) -> None:
    redis_process.start()
    peer = Peer.new()
    with run_registryd(tmp_path, {"REGISTRYD_STORE": redis_process.url}) as registry:
        async with (
            httpx.AsyncClient(timeout=30) as http,
            RegistryClient([registry.url], SECRET) as client,
        ):
            lease = await client.register(peer.registration(1), peer.prove)

            redis_process.kill()
            await healthz_becomes(http, registry, 503)
            body = {"id": peer.id, "lease": lease.lease}
            heartbeat = await signed(http, registry, "POST", "/heartbeat", body)
            assert_store_unavailable(heartbeat)
            assert_store_unavailable(await signed(http, registry, "GET", "/clients", None))
            assert (await http.get(registry.url + "/metrics")).status_code == 200
            assert registry.process.poll() is None

            # The same port again, empty (no persistence): the member registers anew.
            redis_process.start()
            await healthz_becomes(http, registry, 200)
            lease = await client.register(peer.registration(1), peer.prove)
            assert [m.id for m in await client.clients()] == [peer.id]
            await client.heartbeat(peer.id, lease.lease)
        assert registry.process.poll() is None
        assert unavailable_lines(registry, redis_process) == 1
        assert registry.log().count("reachable again") == 1
    assert registry.process.returncode == 0


async def test_a_hung_redis_costs_a_request_seconds_not_minutes(
    tmp_path: Path, redis_process: RedisProcess
) -> None:
    redis_process.start()
    peer = Peer.new()
    with run_registryd(tmp_path, {"REGISTRYD_STORE": redis_process.url}) as registry:
        async with httpx.AsyncClient(timeout=60) as http:
            redis_process.pause()
            started = time.monotonic()
            answer = await signed(http, registry, "POST", "/register", register_body(peer), peer)
            assert_store_unavailable(answer)
            # The read timeout (2 s) and no retry inside redis-py; generous for a busy machine.
            assert time.monotonic() - started < 10
            await healthz_becomes(http, registry, 503)
            redis_process.resume()
            await healthz_becomes(http, registry, 200)
            registered = await signed(
                http, registry, "POST", "/register", register_body(peer), peer
            )
            assert registered.status_code == 200, registered.text
        assert registry.process.poll() is None
