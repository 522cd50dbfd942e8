"""p2pd's peer server against an attacker with its own TLS and certificate.

The rules under test: docs/protocol.md §1, §4, §8 (DESIGN §1, §3, §9).
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hostile.attacker import (
    Attacker,
    Closed,
    build_request,
    ctl,
    joined,
    peer_get,
    poll,
    read_response,
    refused,
    register,
    rst_connect,
    sha256_file,
    signed,
    tcp,
    tls,
)
from tests.support import RunningPeer, RunningRegistry, run_p2pd, run_registryd

MARKER = b"OUTSIDE-THE-SHARE-7f3a"
FAST = "heartbeat_interval = 0.5\n"


@dataclass
class Victim:
    registry: RunningRegistry
    bob: RunningPeer
    alice: RunningPeer
    member: Attacker
    outside: Path


def admitted(port: int, who: Attacker) -> None:
    def check() -> bool:
        try:
            return peer_get(port, who, "/files").status == 200
        except (Closed, ssl.SSLError, OSError):
            return False

    poll(check, timeout=30, what="the peer to admit the registered attacker", every=0.25)


@pytest.fixture(scope="module")
def victim(module_dir: Path) -> Iterator[Victim]:
    outside = module_dir / "outside"
    outside.mkdir()
    (outside / "outside.txt").write_bytes(MARKER)
    bob_share = module_dir / "bob" / "share"
    (bob_share / "docs").mkdir(parents=True)
    (bob_share / "hello.txt").write_bytes(b"hello from bob\n")
    (bob_share / "medium.bin").write_bytes(os.urandom(2_000_000))
    with (bob_share / "big.bin").open("wb") as handle:
        for _ in range(64):
            handle.write(os.urandom(1 << 20))
    (bob_share / "link_out").symlink_to(outside / "outside.txt")
    (bob_share / "dirlink").symlink_to(outside)
    (bob_share / "docs" / "up").symlink_to("../../../outside/outside.txt")
    env = {"REGISTRYD_PEER_TTL": "600"}
    with run_registryd(module_dir, env) as registry:
        urls = [registry.url]
        with (
            run_p2pd(module_dir, "bob", urls, extra_config=FAST + "upload_slots = 1\n") as bob,
            run_p2pd(module_dir, "alice", urls, extra_config=FAST) as alice,
        ):
            member = Attacker.new(module_dir / "attacker")
            assert register(registry.url, member, "mallory", 9).status == 200
            admitted(bob.port, member)
            yield Victim(registry, bob, alice, member, outside / "outside.txt")


def assert_bob_serves(v: Victim) -> None:
    bob = v.bob
    assert bob.process.poll() is None, f"p2pd ended:\n{bob.log()[-3000:]}"
    result = ctl(bob.socket_path, "--json", "status", timeout=30)
    assert result.returncode == 0, result.stderr
    answer = peer_get(bob.port, v.member, "/files/hello.txt")
    assert (answer.status, answer.body) == (200, b"hello from bob\n")
    assert v.outside.read_bytes() == MARKER


def test_a_member_is_served(victim: Victim) -> None:
    listing = peer_get(victim.bob.port, victim.member, "/files").json()
    paths = {f["path"] for f in listing["files"]}
    assert {"hello.txt", "medium.bin", "big.bin"} <= paths
    assert not paths & {"link_out", "dirlink/outside.txt", "docs/up"}
    assert_bob_serves(victim)


def test_connect_then_reset(victim: Victim) -> None:
    """A TCP RST right after accept used to end p2pd (getpeername: ENOTCONN)."""
    port = victim.bob.port
    hello = b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03" + os.urandom(40)
    for i in range(300):
        rst_connect(port, hello if i % 3 == 1 else b"")
    for _ in range(20):  # reset once the TLS session is up
        sock = tls(port, victim.member)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.close()
    assert_bob_serves(victim)


def test_tls_without_a_client_certificate(victim: Victim) -> None:
    for target in ("/files", "/files/hello.txt"):
        assert refused(victim.bob.port, None, target)
    assert_bob_serves(victim)


def test_an_unregistered_certificate(victim: Victim, tmp_path: Path) -> None:
    stranger = Attacker.new(tmp_path)
    for target in ("/files", "/files/hello.txt", "/files/big.bin"):
        assert refused(victim.bob.port, stranger, target)
    assert_bob_serves(victim)


def test_a_member_that_left(victim: Victim, tmp_path: Path) -> None:
    leaver = Attacker.new(tmp_path)
    lease = joined(victim.registry.url, leaver, "leaver", 9)
    admitted(victim.bob.port, leaver)
    kept = tls(victim.bob.port, leaver)
    try:
        kept.sendall(build_request("GET", "/files", {}))
        assert read_response(kept).status == 200
        leave = {"id": leaver.id, "lease": lease}
        assert signed(victim.registry.url, "POST", "/leave", leave).status == 200
        # Refused within two heartbeat intervals (0.5 s here), with slack for a busy box.
        poll(lambda: refused(victim.bob.port, leaver), timeout=10, what="bob to refuse a leaver")
        try:
            kept.sendall(build_request("GET", "/files/hello.txt", {}))
            answer = read_response(kept)
            assert answer.status == 403 and b"hello" not in answer.body, answer
        except (Closed, OSError):
            pass
    finally:
        kept.close()
    assert_bob_serves(victim)


STRICT = [
    "/files/../outside/outside.txt",
    "/files/%2e%2e/outside/outside.txt",
    "/files/%2E%2E%2Foutside%2Foutside.txt",
    "/files/docs/../../outside/outside.txt",
    "/files/hello.txt%00.jpg",
    "/files/%00",
    "/files//etc/passwd",
    "/files/%2Fetc%2Fpasswd",
    "/files/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/files/%c0%ae%c0%ae/outside/outside.txt",
    "/files/" + "a" * 10_000,
    "/files/" + "../" * 3000 + "etc/passwd",
]
LENIENT = [
    "/files/%252e%252e/outside/outside.txt",
    "/files/..%5coutside%5coutside.txt",
    "/files/..\\outside\\outside.txt",
    "/files/%5c%5c..%5c..%5cetc%5cpasswd",
    "/files/./hello.txt/..",
    "/files/link_out",
    "/files/dirlink/outside.txt",
    "/files/docs/up",
    "/files/..;/outside.txt",
    "/../../etc/passwd",
    "/etc/passwd",
    "//etc/passwd",
    "/files/hello.txt/../../outside/outside.txt",
]


@pytest.mark.parametrize("target", STRICT + LENIENT)
def test_traversal_spellings(victim: Victim, target: str) -> None:
    expected = {400} if target in STRICT else {400, 404}
    try:
        answer = peer_get(victim.bob.port, victim.member, target)
    except Closed as exc:
        pytest.fail(f"closed without an answer once TLS was up: {target[:80]}: {exc}")
    assert answer.status in expected, (target[:80], answer.status, answer.body[:200])
    assert MARKER not in answer.body and b"root:" not in answer.body
    assert victim.bob.process.poll() is None


def test_oversize_headers(victim: Victim) -> None:
    many = {f"X-Pad-{i}": "p" * 400 for i in range(100)}
    one = {"X-Huge": "h" * 40_000}
    for headers in (many, one):
        try:
            answer = peer_get(victim.bob.port, victim.member, "/files/hello.txt", headers)
        except Closed as exc:
            pytest.fail(f"closed without an answer: {exc}")
        assert answer.status == 431, answer
        assert b"hello from bob" not in answer.body
    assert_bob_serves(victim)


def test_a_request_without_host_gets_400(victim: Victim) -> None:
    """RFC 9112 §3.2: an HTTP/1.1 request without Host gets 400 (docs/protocol.md §4)."""
    with tls(victim.bob.port, victim.member) as sock:
        sock.sendall(b"GET /files/hello.txt HTTP/1.1\r\n\r\n")
        answer = read_response(sock)
    assert answer.status == 400, answer
    assert answer.json()["error"] == "bad request"
    assert "Host" in answer.json()["message"]
    assert b"hello from bob" not in answer.body


def dribbler(
    sock: socket.socket | ssl.SSLSocket, first: bytes, stop: threading.Event, closed: list[object]
) -> None:
    try:
        sock.sendall(first)
        while not stop.wait(1):
            sock.sendall(b"X")
    except OSError:
        pass
    closed.append(sock)


def test_slowloris(victim: Victim) -> None:
    port, stop = victim.bob.port, threading.Event()
    closed: list[object] = []
    socks: list[socket.socket] = [tcp(port) for _ in range(15)]  # a ClientHello, dribbled
    socks += [tls(port, victim.member) for _ in range(15)]  # a request head, dribbled
    firsts = [b"\x16\x03\x01\x02\x00\x01"] * 15 + [b"GET /files HTTP/1.1\r\nX-A: "] * 15
    threads = [
        threading.Thread(target=dribbler, args=(s, f, stop, closed))
        for s, f in zip(socks, firsts, strict=True)
    ]
    try:
        for thread in threads:
            thread.start()
        assert_bob_serves(victim)
        poll(lambda: len(closed) == len(socks), timeout=60, what="p2pd to drop slowloris")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
        for sock in socks:
            sock.close()
    assert_bob_serves(victim)


def test_200_idle_connections(victim: Victim) -> None:
    port = victim.bob.port
    socks: list[socket.socket] = []
    try:
        socks += [tcp(port) for _ in range(200)]
        socks += [tls(port, victim.member) for _ in range(20)]

        def served() -> bool:
            try:
                return peer_get(port, victim.member, "/files/hello.txt").status == 200
            except (Closed, OSError):
                return False

        took = poll(served, timeout=30, what="p2pd to serve a member among 200 idle connections")
        assert took < 30
        fetched = ctl(victim.alice.socket_path, "--json", "fetch", "bob", "hello.txt", timeout=60)
        assert fetched.returncode == 0, fetched.stderr
    finally:
        for sock in socks:
            sock.close()
    assert_bob_serves(victim)


def medium_served(victim: Victim) -> bool:
    """Whether bob serves medium.bin whole now (upload_slots = 1: its slot is free)."""
    try:
        answer = peer_get(victim.bob.port, victim.member, "/files/medium.bin")
    except (Closed, OSError):
        return False
    want = (victim.bob.share_dir / "medium.bin").read_bytes()
    return answer.status == 200 and answer.body == want


def test_a_stalled_reader_frees_the_upload_slot(victim: Victim) -> None:
    """upload_slots = 1: a reader that stops mid-body must not keep the slot forever."""
    staller = tls(victim.bob.port, victim.member)
    try:
        staller.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        staller.sendall(build_request("GET", "/files/big.bin", {}))
        assert staller.recv(4096)  # the answer started; now stop reading, keep the socket open
        medium = victim.bob.share_dir / "medium.bin"
        started = time.monotonic()
        poll(lambda: medium_served(victim), timeout=75, what="the upload slot to be freed", every=1)
        assert time.monotonic() - started < 75
        fetched = ctl(victim.alice.socket_path, "--json", "fetch", "bob", "medium.bin", timeout=90)
        assert fetched.returncode == 0, fetched.stderr
        assert sha256_file(victim.alice.download_dir / "medium.bin") == sha256_file(medium)
    finally:
        staller.close()
    assert_bob_serves(victim)


# -- large bodies: sent by a worker thread (p2pd/tls/bodypump.py) ---------------


def test_a_large_file_whole_and_from_an_offset(victim: Victim) -> None:
    """The thread-sent body is the file's bytes, for 200 and 206; the answer says it closes."""
    want = (victim.bob.share_dir / "big.bin").read_bytes()
    whole = peer_get(victim.bob.port, victim.member, "/files/big.bin")
    assert whole.status == 200 and whole.body == want
    assert whole.headers["connection"] == "close"
    offset = 40_000_001
    tail = peer_get(victim.bob.port, victim.member, "/files/big.bin", {"Range": f"bytes={offset}-"})
    assert tail.status == 206 and tail.body == want[offset:]
    assert tail.headers["content-range"] == f"bytes {offset}-{len(want) - 1}/{len(want)}"
    assert_bob_serves(victim)


def test_a_reader_that_resets_mid_body_frees_the_upload_slot_at_once(victim: Victim) -> None:
    """upload_slots = 1: a reset mid-body ends that upload, and the next is served."""
    reader = tls(victim.bob.port, victim.member)
    reader.sendall(build_request("GET", "/files/big.bin", {}))
    assert reader.recv(65536)  # the answer started
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    reader.close()  # an RST, with most of 64 MiB still to send
    # Within the send timeout (30 s) would be a stall; a reset is seen at the next write.
    poll(lambda: medium_served(victim), timeout=10, what="the slot to be freed at once", every=0.1)
    assert_bob_serves(victim)


def test_a_pipelined_request_does_not_cut_a_large_body_short(victim: Victim) -> None:
    """The answer closes the connection; the unread second request must not turn
    that close into an RST that destroys the body's end before it is read."""
    want = (victim.bob.share_dir / "big.bin").read_bytes()
    with tls(victim.bob.port, victim.member) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(build_request("GET", "/files/big.bin", {}))
        started = sock.recv(65536)
        # Sent while the body flows: it waits, unread, in bob's socket.
        sock.sendall(build_request("GET", "/files/hello.txt", {}))
        head, _, body = started.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        rest = bytearray(body)
        while chunk := sock.recv(1 << 20):
            rest += chunk
    assert len(rest) == len(want) and rest == want
    assert_bob_serves(victim)
