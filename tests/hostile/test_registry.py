"""registryd against an attacker: forged, replayed and malformed signatures; hostile TCP."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostile.attacker import (
    Attacker,
    Closed,
    RawResponse,
    build_request,
    content_digest,
    http,
    joined,
    poll,
    register,
    registry_port,
    rst_connect,
    sign,
    signed,
    tcp,
)
from tests.support import RunningRegistry, run_registryd


@pytest.fixture(scope="module")
def registry(module_dir: Path) -> Iterator[RunningRegistry]:
    with run_registryd(module_dir) as running:
        yield running


def assert_registry_serves(registry: RunningRegistry, within: float = 10) -> None:
    """registryd is alive and answers a good signed request quickly."""
    assert registry.process.poll() is None, f"registryd ended:\n{registry.log()[-3000:]}"
    started = time.monotonic()
    answer = signed(registry.url, "GET", "/clients")
    assert answer.status == 200, answer
    assert "clients" in answer.json()
    assert time.monotonic() - started < within


def assert_refused(answer: RawResponse, status: int = 401) -> None:
    assert answer.status == status, answer
    assert isinstance(answer.json().get("error"), str), answer


def send_signed(
    registry: RunningRegistry, path: str, body: bytes, headers: dict[str, str]
) -> RawResponse:
    raw = build_request("POST", path, {**headers, "Content-Type": "application/json"}, body)
    return http(registry_port(registry.url), raw)


def test_a_hand_signed_request_is_accepted(registry: RunningRegistry, tmp_path: Path) -> None:
    """The attacker's signer is right: a correct hand-built signature gets through."""
    who = Attacker.new(tmp_path)
    lease = joined(registry.url, who, "mallory", 9)
    assert signed(registry.url, "GET", f"/members/{who.id}").json()["id"] == who.id
    assert signed(registry.url, "POST", "/leave", {"id": who.id, "lease": lease}).status == 200


def test_no_signature(registry: RunningRegistry) -> None:
    raw = build_request("GET", "/clients", {"Content-Digest": content_digest(b"")})
    assert_refused(http(registry_port(registry.url), raw))
    assert_refused(http(registry_port(registry.url), build_request("GET", "/clients", {})))
    assert_registry_serves(registry)


def test_wrong_secret(registry: RunningRegistry) -> None:
    assert_refused(signed(registry.url, "GET", "/clients", secret="not-the-network-secret"))
    assert_registry_serves(registry)


def test_replay_to_the_same_instance(registry: RunningRegistry) -> None:
    headers = sign("GET", "/clients", b"")
    raw = build_request("GET", "/clients", headers)
    assert http(registry_port(registry.url), raw).status == 200
    assert_refused(http(registry_port(registry.url), raw))
    assert_registry_serves(registry)


def test_replay_to_another_instance_sharing_redis(tmp_path: Path, redis_url: str) -> None:
    env = {"REGISTRYD_STORE": redis_url}
    with (
        run_registryd(tmp_path, env) as a,
        run_registryd(tmp_path, env) as b,
    ):
        raw = build_request("GET", "/clients", sign("GET", "/clients", b""))
        assert http(registry_port(a.url), raw).status == 200
        assert_refused(http(registry_port(b.url), raw))
        assert_registry_serves(a)
        assert_registry_serves(b)


@pytest.mark.parametrize("offset", [-120, -61 - 1, 61 + 1, 120, 10**9])
def test_stale_and_future_created(registry: RunningRegistry, offset: int) -> None:
    answer = signed(registry.url, "GET", "/clients", created=int(time.time()) + offset)
    assert_refused(answer)
    assert_registry_serves(registry)


def test_body_changed_after_signing(registry: RunningRegistry, tmp_path: Path) -> None:
    who, other = Attacker.new(tmp_path), Attacker.new(tmp_path)
    signed_body = json.dumps({"id": who.id}).encode()
    changed = json.dumps({"id": other.id}).encode()
    headers = sign("POST", "/leave", signed_body)
    # The digest left as signed: it no longer matches the body.
    assert_refused(send_signed(registry, "/leave", changed, headers))
    # The digest recomputed for the new body: the signature no longer matches it.
    headers = {**sign("POST", "/leave", signed_body), "Content-Digest": content_digest(changed)}
    assert_refused(send_signed(registry, "/leave", changed, headers))
    assert_registry_serves(registry)


@pytest.mark.parametrize(
    "components", [("@method", "@path"), ("@path", "content-digest"), ("@method",)]
)
def test_signature_missing_a_component(
    registry: RunningRegistry, components: tuple[str, ...]
) -> None:
    assert_refused(signed(registry.url, "GET", "/clients", components=components))
    assert_registry_serves(registry)


def test_forged_id_is_refused(registry: RunningRegistry, tmp_path: Path) -> None:
    victim, mallory = Attacker.new(tmp_path), Attacker.new(tmp_path)
    assert register(registry.url, victim, "victim", 9).status == 200
    payload = {"id": victim.id, "name": "victim", "cert": mallory.cert_pem, "port": 9}
    assert_refused(signed(registry.url, "POST", "/register", payload), 400)
    entry = signed(registry.url, "GET", f"/members/{victim.id}").json()
    assert entry["cert"] == victim.cert_pem  # the victim's entry is untouched
    assert_registry_serves(registry)


def test_oversize_body(registry: RunningRegistry, tmp_path: Path) -> None:
    who = Attacker.new(tmp_path)
    payload = {"id": who.id, "name": "x" * 200_000, "cert": who.cert_pem, "port": 9}
    assert_refused(signed(registry.url, "POST", "/register", payload), 413)
    body = b"{" * 5_000_000
    raw = build_request("POST", "/register", sign("POST", "/register", body), body)
    assert_refused(http(registry_port(registry.url), raw), 413)
    assert_registry_serves(registry)


def test_a_flood_of_bad_signatures_is_limited(registry: RunningRegistry) -> None:
    """From 127.0.0.3: 429 (with Retry-After) or a delay of ≥ 0.5 s after at most 20."""
    limited = 0
    for attempt in range(1, 41):
        started = time.monotonic()
        answer = signed(
            registry.url, "GET", "/clients", secret="guessing-the-secret", source="127.0.0.3"
        )
        slow = time.monotonic() - started >= 0.5
        if attempt > 20:
            assert (answer.status == 429 and "retry-after" in answer.headers) or slow, (
                attempt,
                answer,
            )
            limited += 1
        else:
            assert answer.status in (401, 429), answer
    assert limited == 20
    # Another address is not slowed down.
    started = time.monotonic()
    assert_registry_serves(registry)
    assert time.monotonic() - started < 2


def test_connect_then_reset_many_times(registry: RunningRegistry) -> None:
    port = registry_port(registry.url)
    partial = build_request("POST", "/register", sign("POST", "/register", b"{}"), b"{}")[:60]
    for i in range(300):
        rst_connect(port, partial if i % 2 else b"")
    assert_registry_serves(registry)


def dribble(sock: socket.socket, stop: threading.Event, closed: list[socket.socket]) -> None:
    """Slowloris: a request head that never ends, one byte a second."""
    try:
        sock.sendall(b"POST /register HTTP/1.1\r\nHost: r\r\n")
        while not stop.wait(1):
            sock.sendall(b"X")
            sock.settimeout(0.01)
            try:
                if sock.recv(65536) == b"":
                    break
            except TimeoutError:
                continue
    except OSError:
        pass
    closed.append(sock)


def test_slowloris(registry: RunningRegistry) -> None:
    port, stop = registry_port(registry.url), threading.Event()
    closed: list[socket.socket] = []
    socks = [tcp(port) for _ in range(40)]
    threads = [threading.Thread(target=dribble, args=(s, stop, closed)) for s in socks]
    try:
        for thread in threads:
            thread.start()
        assert_registry_serves(registry, within=5)
        # request_timeout (10 s by default) cuts every dribbler off.
        poll(lambda: len(closed) == len(socks), timeout=45, what="registryd to drop slowloris")
        assert_registry_serves(registry)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
        for sock in socks:
            sock.close()


def test_many_idle_connections(registry: RunningRegistry) -> None:
    port = registry_port(registry.url)
    socks: list[socket.socket] = []
    try:
        for _ in range(600):
            socks.append(tcp(port))
        assert_registry_serves(registry, within=10)
        for sock in socks[:50]:  # half-sent requests among them
            with contextlib.suppress(OSError):
                sock.sendall(b"GET /clients HTTP/1.1\r\n")
        assert_registry_serves(registry, within=10)
    finally:
        for sock in socks:
            sock.close()
    assert_registry_serves(registry)


def test_garbage_requests(registry: RunningRegistry) -> None:
    port = registry_port(registry.url)
    for raw in (
        b"\x16\x03\x01\x02\x00" + bytes(range(256)) * 4,  # a TLS ClientHello to plain HTTP
        b"GET /clients HTTP/1.1\r\nHost: r\r\nContent-Length: -1\r\n\r\n",
        b"GET /clients HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /clients HTTP/1.1\r\n" + b"X-A: " + b"a" * 70_000 + b"\r\n\r\n",
        b"GET /clients HTTP/1.1\r\nHost: r\r\nSignature-Input: sig=(((((\r\n"
        b"Signature: sig=:!!:\r\nContent-Digest: sha-256=:x:\r\n\r\n",
    ):
        try:
            answer = http(port, raw)
            assert 400 <= answer.status < 500, answer
        except Closed:
            pass
    assert_registry_serves(registry)
