"""The real registryd as a subprocess on loopback, spoken to over HTTP."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from p2pcommon.registry_client import RegistryClient, UnknownMember
from p2pcommon.signing.signer import Signer
from tests.support import (
    SECRET,
    VENV_BIN,
    Peer,
    RunningRegistry,
    free_port,
    registryd_env,
    run_registryd,
    wait_until,
)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    with run_registryd(tmp_path) as running:
        yield running


def signed_post(
    url: str, path: str, payload: object, *, secret: str = SECRET, now: float | None = None
) -> httpx.Response:
    body = json.dumps(payload).encode()
    headers, _ = Signer(secret).sign_request("POST", path, body, now=now or time.time())
    return httpx.post(url + path, content=body, headers=headers)


#: A heartbeat of no member: authentic, answered 404.
UNKNOWN = {"id": "a" * 52, "lease": "x" * 22}


def error_of(response: httpx.Response) -> str:
    error: str = response.json()["error"]
    return error


async def test_register_list_heartbeat_leave_with_verified_answers(
    registry: RunningRegistry,
) -> None:
    alice, bob = Peer.new("alice"), Peer.new("bob")
    async with RegistryClient([registry.url], SECRET) as client:
        lease = await client.register(alice.registration(), alice.prove)
        # peer_ttl 30: heartbeats every 10 s, lengthened by a jitter of up to 10 %.
        assert 10 <= lease.heartbeat_interval <= 11
        assert lease.ttl == pytest.approx(3 * lease.heartbeat_interval, abs=0.002)
        assert lease.members == 1
        bob_lease = await client.register(
            bob.registration(7171, addresses=["127.0.0.2:7171"]), bob.prove
        )
        assert bob_lease.members == 2
        members = {m.name: m for m in await client.clients()}
        assert members["alice"].addresses == ["127.0.0.1:7070"]
        assert members["bob"].addresses == ["127.0.0.2:7171"]
        assert members["alice"].cert == alice.cert
        assert abs(members["alice"].last_seen - time.time()) < 5
        assert (await client.member(bob.id)) == members["bob"]
        page, following = await client.members_page(limit=10, certs=False)
        assert sorted(m.name for m in page) == ["alice", "bob"] and following is None
        assert [m.name for m in (await client.resolve("alice"))[0]] == ["alice"]
        assert (await client.heartbeat(alice.id, lease.lease)).members == 2
        await client.leave(alice.id, lease.lease)
        assert await client.member(alice.id) is None  # at once: no snapshot for lookups
        assert [m.name for m in (await client.members_page())[0]] == ["bob"]
        with pytest.raises(UnknownMember):
            await client.heartbeat(alice.id, lease.lease)
    assert "registered" in registry.log() and "left" in registry.log()


async def test_members_whose_lease_runs_out_vanish(tmp_path: Path) -> None:
    with run_registryd(tmp_path, {"REGISTRYD_PEER_TTL": "0.6"}) as registry:
        peer = Peer.new()
        async with RegistryClient([registry.url], SECRET) as client:
            lease = await client.register(peer.registration(), peer.prove)
            assert 0.2 <= lease.heartbeat_interval <= 0.22
            assert await client.member(peer.id) is not None

            async def no_members() -> bool:
                return await client.member(peer.id) is None and not await client.clients()

            await wait_until(no_members, what="the member to expire")
            with pytest.raises(UnknownMember):
                await client.heartbeat(peer.id, lease.lease)

        async def expiry_counted() -> bool:
            async with httpx.AsyncClient() as http:
                metrics = await http.get(registry.url + "/metrics")
            return "registry_expiries_total 1.0" in metrics.text

        await wait_until(expiry_counted, what="registry_expiries_total to count it")
        assert "expired" in registry.log()


def test_every_authentication_failure_is_401_with_its_reason(registry: RunningRegistry) -> None:
    url = registry.url
    body = json.dumps(UNKNOWN).encode()
    unsigned = httpx.post(url + "/heartbeat", content=body)
    assert (unsigned.status_code, error_of(unsigned)) == (401, "missing signature")

    wrong = signed_post(url, "/heartbeat", UNKNOWN, secret="not-the-secret")
    assert (wrong.status_code, error_of(wrong)) == (401, "bad signature")

    stale = signed_post(url, "/heartbeat", UNKNOWN, now=time.time() - 120)
    assert (stale.status_code, error_of(stale)) == (401, "stale")

    headers, _ = Signer(SECRET).sign_request("POST", "/heartbeat", body, now=time.time())
    tampered = httpx.post(url + "/heartbeat", content=body.replace(b"x", b"y"), headers=headers)
    assert (tampered.status_code, error_of(tampered)) == (401, "digest mismatch")

    first = httpx.post(url + "/heartbeat", content=body, headers=headers)
    assert first.status_code == 404  # authentic: an unknown id
    replay = httpx.post(url + "/heartbeat", content=body, headers=headers)
    assert (replay.status_code, error_of(replay)) == (401, "replayed")

    for response in (unsigned, wrong, stale, tampered, replay):
        assert response.headers["content-type"] == "application/json"
        assert response.json()["message"]
    metrics = httpx.get(url + "/metrics").text
    for reason in ("missing signature", "bad signature", "stale", "digest mismatch", "replayed"):
        assert f'registry_auth_failures_total{{reason="{reason}"}} 1.0' in metrics


def test_a_burst_of_failures_gets_429_and_valid_requests_still_pass(
    registry: RunningRegistry,
) -> None:
    statuses = [
        signed_post(registry.url, "/heartbeat", UNKNOWN, secret="bad-secret!").status_code
        for _ in range(24)
    ]
    assert statuses[0] == 401
    assert 429 in statuses
    assert statuses.index(429) <= 20
    limited = signed_post(registry.url, "/heartbeat", UNKNOWN, secret="bad-secret!")
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) > 0
    assert signed_post(registry.url, "/heartbeat", UNKNOWN).status_code == 404


def test_register_refuses_an_id_that_is_not_the_certificate_hash(
    registry: RunningRegistry,
) -> None:
    alice, mallory = Peer.new(), Peer.new()
    answer = signed_post(
        registry.url,
        "/register",
        {"id": alice.id, "name": "mallory", "cert": mallory.cert, "port": 7070},
    )
    assert answer.status_code == 400
    assert error_of(answer) == "id mismatch"


def test_not_found_and_oversized_inputs(registry: RunningRegistry) -> None:
    assert httpx.get(registry.url + "/nothing-here").status_code == 404
    assert httpx.get(registry.url + "/healthz").json() == {"status": "ok"}
    big = signed_post(registry.url, "/register", {"pad": "x" * (70 * 1024)})
    assert big.status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b"x" * 1024

    chunked = httpx.post(registry.url + "/register", content=chunks())
    assert chunked.status_code == 413
    huge_header = httpx.get(registry.url + "/healthz", headers={"X-Big": "y" * 20_000})
    assert huge_header.status_code == 431
    # The daemon is still serving.
    assert httpx.get(registry.url + "/healthz").status_code == 200


def raw_connection(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.settimeout(10)
    return sock


def test_garbage_gets_400_and_the_daemon_keeps_running(registry: RunningRegistry) -> None:
    with raw_connection(registry.url) as sock:
        sock.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 400")
    assert httpx.get(registry.url + "/healthz").status_code == 200


def test_idle_and_slow_connections_time_out(tmp_path: Path) -> None:
    env = {"REGISTRYD_IDLE_TIMEOUT": "0.3", "REGISTRYD_REQUEST_TIMEOUT": "0.3"}
    with run_registryd(tmp_path, env) as registry:
        with raw_connection(registry.url) as idle:
            started = time.monotonic()
            assert idle.recv(4096) == b""  # closed by the server, no answer
            assert time.monotonic() - started < 5
        with raw_connection(registry.url) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finishes
            answer = slow.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408")


def test_sigterm_stops_gracefully_with_sd_notify(tmp_path: Path) -> None:
    with run_registryd(tmp_path, {"WATCHDOG_USEC": "200000"}) as registry:
        ready = registry.notify.wait_for("READY")
        assert ready["STATUS"].startswith("serving on http://127.0.0.1:")
        registry.notify.wait_for("WATCHDOG", "1")
        assert registry.stop(signal.SIGTERM) == 0
        registry.notify.wait_for("STOPPING", "1")
        assert "stopped" in registry.log()


def run_to_exit(env_extra: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "empty.toml"
    config.write_text("")
    env = registryd_env(free_port(), env_extra)
    return subprocess.run(
        [str(VENV_BIN / "registryd"), "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"REGISTRYD_PEER_TTL": "soon"}, "key 'peer_ttl'"),
        ({"REGISTRYD_SECRET": "tiny"}, "key 'secret'"),
        ({"REGISTRYD_SECRET": ""}, "key 'secret'"),
        ({"REGISTRYD_STORE": "mysql://db"}, "key 'store'"),
    ],
)
def test_bad_configuration_exits_2_naming_the_key(
    tmp_path: Path, env: dict[str, str], needle: str
) -> None:
    result = run_to_exit(env, tmp_path)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr


def test_missing_secret_refuses_to_start(tmp_path: Path) -> None:
    env = registryd_env(free_port())
    env.pop("REGISTRYD_SECRET")
    config = tmp_path / "empty.toml"
    config.write_text("")
    result = subprocess.run(
        [str(VENV_BIN / "registryd"), "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "no shared secret" in result.stderr


def test_port_in_use_is_a_clear_error(registry: RunningRegistry, tmp_path: Path) -> None:
    port = registry.url.rsplit(":", 1)[1]
    result = run_to_exit({"REGISTRYD_LISTEN": f"127.0.0.1:{port}"}, tmp_path)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert SECRET not in result.stderr
