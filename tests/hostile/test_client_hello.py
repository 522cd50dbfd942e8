"""Attacks on the ClientHello peek (docs/protocol.md §1): before its handshake p2pd reads
the client's first record for the SNI, looks that id up and may build a context.

A real PeerServer with a real registry (tests/p2pd/live_registry.py); the attacker
writes its bytes on raw sockets, its ClientHello made by Python's ssl in memory.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from p2pcommon.models import Member
from p2pd.membership.directory import Directory
from p2pd.peer import handshake as handshake_module
from p2pd.peer.server import PeerServer
from p2pd.share.watching import Share
from p2pd.tls.contexts import ServerContexts
from p2pd.tls.identity import NetworkCA, load_or_create
from tests.hostile.attacker import Attacker, Closed, client_context, peer_get, tcp
from tests.p2pd.live_registry import LiveRegistry, live_registry
from tests.support import SECRET

#: The handshake deadline in these tests (p2pd's is 10 s): what a trickle is cut at.
DEADLINE = 1.5


@dataclass
class Victim:
    server: PeerServer
    contexts: ServerContexts
    directory: Directory
    registry: LiveRegistry
    port: int


@asynccontextmanager
async def victim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, max_entries: int = 64
) -> AsyncIterator[Victim]:
    monkeypatch.setattr(handshake_module, "HANDSHAKE_TIMEOUT", DEADLINE)
    root, state = tmp_path / "share", tmp_path / "state"
    root.mkdir()
    (root / "a.txt").write_bytes(b"a")
    network = NetworkCA.from_secret(SECRET)
    identity, _ = load_or_create(state, network)
    share = Share(root, state)
    await share.rescan()
    async with live_registry() as registry, trio.open_nursery() as nursery:
        directory = Directory(identity.id, registry.client, interval=30, max_entries=max_entries)
        contexts = ServerContexts(identity, network, max_foreign=8)
        server = PeerServer(share, directory, contexts, upload_slots=2, rate_limit=0)
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(server.http.run, listeners)
        yield Victim(server, contexts, directory, registry, listeners[0].socket.getsockname()[1])
        await server.http.shutdown(1)
        nursery.cancel_scope.cancel()


def client_hello(who: Attacker, sni: str) -> bytes:
    """The first record Python's ssl sends as ``who`` naming ``sni``."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(who, sni=sni).wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def random_id() -> str:
    return base64.b32encode(os.urandom(40)).decode().lower()[:52]


def closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closed ``sock`` (reading whatever it sends)."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:  # closed with our bytes unread: a reset
        pass
    return time.monotonic() - started


class LoopWatch:
    """How late a task that wakes every 10 ms ran, at worst: the event loop's latency."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        while True:
            planned = trio.current_time() + 0.01
            await trio.sleep_until(planned)
            self.worst = max(self.worst, trio.current_time() - planned)


async def test_a_trickled_client_hello_is_cut_at_the_handshake_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    who = Attacker.new(tmp_path / "slow")
    hello = client_hello(who, who.id)
    async with victim(tmp_path, monkeypatch) as v:

        def trickle() -> float:
            with tcp(v.port) as sock:
                started = time.monotonic()
                try:
                    for byte in hello[:-1]:  # never the whole record
                        sock.sendall(bytes([byte]))
                        time.sleep(0.01)
                    closed_within(sock, 5 * DEADLINE)
                except OSError:  # reset while still sending: closed
                    pass
                return time.monotonic() - started

        took = await trio.to_thread.run_sync(trickle)
        assert DEADLINE * 0.9 <= took <= DEADLINE * 3
        assert v.server.stats.refused["handshake"] == 1

        def silent() -> float:
            with tcp(v.port) as sock:
                sock.sendall(hello[:5])  # a header promising a record that never comes
                return closed_within(sock, 5 * DEADLINE)

        assert DEADLINE * 0.9 <= await trio.to_thread.run_sync(silent) <= DEADLINE * 3


async def test_a_client_hello_cut_short_by_a_close_costs_no_spin_until_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    who = Attacker.new(tmp_path / "quitter")
    hello = client_hello(who, who.id)
    async with victim(tmp_path, monkeypatch) as v:
        started = trio.current_time()

        def quit_midway() -> float:
            with tcp(v.port) as sock:
                sock.sendall(hello[: len(hello) // 2])
                sock.shutdown(socket.SHUT_WR)  # half of a hello, then our FIN
                return closed_within(sock, 5 * DEADLINE)

        assert await trio.to_thread.run_sync(quit_midway) < DEADLINE / 2
        # Given up at once: not by peeking at the same half again until the deadline.
        assert trio.current_time() - started < DEADLINE / 2
        assert v.directory.requests == 0


@pytest.mark.parametrize(
    "lie",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # not TLS at all
        b"\x16\x03\x01\xff\xff" + b"\x00" * 200,  # a record longer than TLS allows
        b"\x16\x03\x01\x00\x10" + b"\x01\x00\x00\xff" + b"\x00" * 12,  # a hello cut short
    ],
    ids=["plain HTTP", "oversized record", "hello longer than its record"],
)
async def test_a_client_hello_that_lies_gets_no_further_than_the_default_handshake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lie: bytes
) -> None:
    async with victim(tmp_path, monkeypatch) as v:

        def send() -> bytes:
            with tcp(v.port) as sock:
                sock.sendall(lie)
                sock.settimeout(5 * DEADLINE)
                answer = b""
                try:
                    while chunk := sock.recv(65536):
                        answer += chunk
                except ConnectionResetError:
                    pass
                return answer

        answer = await trio.to_thread.run_sync(send)
        assert b"HTTP" not in answer  # at most a TLS alert
        assert v.server.stats.refused["handshake"] == 1
        assert v.directory.requests == 0 and v.contexts.foreign == 0


async def test_a_flood_of_strange_names_keeps_memory_bounded_and_the_loop_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    who = Attacker.new(tmp_path / "flood")
    async with victim(tmp_path, monkeypatch, max_entries=64) as v, trio.open_nursery() as nursery:
        watch = LoopWatch()
        nursery.start_soon(watch.run)

        def flood(count: int) -> int:
            refused = 0
            for _ in range(count):
                try:
                    peer_get(v.port, who, "/files", sni=random_id())
                except (ssl.SSLError, Closed, OSError):
                    refused += 1
            return refused

        started = trio.current_time()
        async with trio.open_nursery() as attackers:
            results: list[int] = []

            async def one() -> None:
                results.append(await trio.to_thread.run_sync(flood, 50))

            for _ in range(4):
                attackers.start_soon(one)
        assert sum(results) == 200  # no name got it in
        assert v.directory.kept <= 64 and v.contexts.foreign == 0
        # Our lookups at the registry were spared: a burst, then a few a second.
        limited = v.server.stats.refused["sni lookups limited"]
        assert limited > 0 and v.directory.requests == 200 - limited
        took = trio.current_time() - started
        # All from one address: its part of the lookups, not everyone's.
        allowed = (
            handshake_module.SNI_LOOKUP_BURST + handshake_module.SNI_LOOKUP_RATE_PER_ADDRESS * took
        )
        assert v.directory.requests <= allowed + 1
        assert v.contexts.builds == 1
        assert watch.worst < 0.25, f"the loop stalled {watch.worst:.3f} s"
        nursery.cancel_scope.cancel()


async def test_many_foreign_members_cost_a_bounded_number_of_contexts_built_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members = [Attacker.new(tmp_path / f"m{n}") for n in range(30)]
    async with victim(tmp_path, monkeypatch) as v, trio.open_nursery() as nursery:
        await v.registry.add(
            *(
                Member(id=m.id, name=f"m{n}", addresses=[], cert=m.cert_pem, last_seen=0)
                for n, m in enumerate(members)
            )
        )
        watch = LoopWatch()
        nursery.start_soon(watch.run)

        def visit(who: Attacker) -> int:
            return peer_get(v.port, who, "/files").status  # names itself by SNI

        for who in members:
            assert await trio.to_thread.run_sync(visit, who) == 200
        assert v.contexts.foreign == 8  # the most recent ones kept, the others rebuilt
        assert v.contexts.builds == 1 + 30
        assert await trio.to_thread.run_sync(visit, members[-1]) == 200
        assert v.contexts.builds == 1 + 30  # kept: not built again
        assert watch.worst < 0.25, f"the loop stalled {watch.worst:.3f} s"
        nursery.cancel_scope.cancel()


async def test_names_that_are_no_member_id_are_never_looked_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    who = Attacker.new(tmp_path / "names")
    async with victim(tmp_path, monkeypatch) as v:

        def flood() -> int:
            refused = 0
            for n in range(100):
                try:
                    peer_get(v.port, who, "/files", sni=f"host{n}.example.org")
                except (ssl.SSLError, Closed, OSError):
                    refused += 1
            return refused

        assert await trio.to_thread.run_sync(flood) == 100
        # Nothing asked of the registry, and nothing of the lookups' allowance spent.
        assert v.directory.requests == 0
        assert v.server.stats.refused["sni lookups limited"] == 0


async def test_a_flood_from_one_address_leaves_a_foreign_member_elsewhere_its_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flooder = Attacker.new(tmp_path / "flooder")
    member = Attacker.new(tmp_path / "member")
    async with victim(tmp_path, monkeypatch) as v:
        await v.registry.add(
            Member(id=member.id, name="member", addresses=[], cert=member.cert_pem, last_seen=0)
        )

        def flood() -> None:
            for _ in range(150):  # well past one address's burst and refill
                with contextlib.suppress(ssl.SSLError, Closed, OSError):
                    peer_get(v.port, flooder, "/files", sni=random_id(), source="127.0.0.1")

        await trio.to_thread.run_sync(flood)
        assert v.server.stats.refused["sni lookups limited"] > 0
        # The foreign member, from another address, is looked up and gets in at once.
        answer = await trio.to_thread.run_sync(
            lambda: peer_get(v.port, member, "/files", source="127.0.0.2")
        )
        assert answer.status == 200
