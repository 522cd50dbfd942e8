"""One member against the upload slots: many slow connections must not starve the others.

A real PeerServer on loopback with its TLS; the members are raw TLS clients
in threads (tests/hostile/attacker.py), one of which reads its downloads a
trickle at a time over several connections (docs/protocol.md §4.5).  The
pace window is shortened from 30 s to a second so that the test is quick.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from p2pcommon.models import Member
from p2pd.peer.server import PeerServer
from p2pd.share.watching import Share
from p2pd.tls.contexts import ServerContexts
from p2pd.tls.identity import load_or_create
from tests.hostile.attacker import Attacker, build_request, client_context, read_response
from tests.p2pd.live_registry import live_registry

KiB = 1024
BIG = os.urandom(8 * 1024 * KiB)
MEDIUM = os.urandom(1100 * KiB)  # sent by worker threads (≥ 1 MiB), or paced by a limit
SMALL = os.urandom(100 * KiB)


@dataclass
class Server:
    server: PeerServer
    port: int
    mallory: Attacker  # many slow connections
    bob: Attacker
    carol: Attacker


@asynccontextmanager
async def serving(
    tmp_path: Path, *, slots: int, rate_limit: int = 0, floor: int = 0, window: float = 1.0
) -> AsyncIterator[Server]:
    root, state = tmp_path / "share", tmp_path / "state"
    root.mkdir()
    state.mkdir()
    for name, data in (("big.bin", BIG), ("medium.bin", MEDIUM), ("small.bin", SMALL)):
        (root / name).write_bytes(data)
    (root / "medium2.bin").write_bytes(MEDIUM)
    identity, _ = load_or_create(state)
    who = {name: Attacker.new(tmp_path / name) for name in ("mallory", "bob", "carol")}
    listed = [
        Member(id=a.id, name=n, addresses=[], cert=a.cert_pem, last_seen=0) for n, a in who.items()
    ]
    share = Share(root, state)
    await share.rescan()
    async with live_registry(listed) as registry, trio.open_nursery() as nursery:
        server = PeerServer(
            share,
            registry.directory(identity.id),
            ServerContexts(identity),
            upload_slots=slots,
            rate_limit=rate_limit,
            min_upload_rate=floor,
            pace_window=window,
        )
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(server.http.run, listeners)
        port = listeners[0].socket.getsockname()[1]
        yield Server(server, port, who["mallory"], who["bob"], who["carol"])
        await server.http.shutdown(1)
    assert server.stats.active == 0  # every slot and file handed back


@dataclass
class Reader:
    """A download read ``piece`` bytes every ``every`` seconds, on its own connection."""

    port: int
    who: Attacker
    target: str
    piece: int
    every: float
    status: int = 0
    received: bytearray = field(default_factory=bytearray)
    length: int = -1
    ended: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Reader:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        raw = socket.socket()
        # A small receive buffer: the kernel must not swallow the file for us.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KiB)
        raw.settimeout(60)
        try:
            raw.connect(("127.0.0.1", self.port))
            with client_context(self.who).wrap_socket(raw) as sock:
                sock.sendall(build_request("GET", self.target, {}))
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = sock.recv(1)
                    if not chunk:
                        return
                    head += chunk
                status_line, *lines = head.decode("latin-1").split("\r\n")
                self.status = int(status_line.split()[1])
                for line in lines:
                    name, _, value = line.partition(":")
                    if name.lower() == "content-length":
                        self.length = int(value)
                while len(self.received) < self.length and not self.stop.is_set():
                    chunk = sock.recv(self.piece)
                    if not chunk:
                        return
                    self.received += chunk
                    time.sleep(self.every)
        except (OSError, ssl.SSLError):
            return
        finally:
            self.ended.set()

    @property
    def complete(self) -> bool:
        return self.length >= 0 and len(self.received) == self.length


def get(port: int, who: Attacker, target: str) -> tuple[int, dict[str, str], bytes]:
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    with client_context(who).wrap_socket(raw) as sock:
        sock.sendall(build_request("GET", target, {}))
        answer = read_response(sock)
    return answer.status, answer.headers, answer.body


async def until(check: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """Poll what threads and the server do: time has to pass, no event reaches us."""
    with trio.move_on_after(limit):
        for _ in itertools.count():
            if check():
                return
            await trio.sleep(0.02)
    raise AssertionError(f"timed out after {limit} s waiting for {what}")


async def test_a_member_holds_at_most_its_share_while_the_others_may_want_slots(
    tmp_path: Path,
) -> None:
    """upload_slots = 4: one member's share is 1; beyond it, only while 1 stays free."""
    async with serving(tmp_path, slots=4) as s:
        trickles = [Reader(s.port, s.mallory, "/files/big.bin", 4 * KiB, 0.5) for _ in range(3)]
        for reader in trickles:
            reader.start()
        await until(lambda: s.server.slots.active == 3, "mallory to hold three slots")
        # A fourth would leave nobody else a slot: refused, saying it is mallory's share.
        status, headers, body = await trio.to_thread.run_sync(
            get, s.port, s.mallory, "/files/small.bin"
        )
        assert (status, headers["retry-after"]) == (503, "5"), body[:300]
        assert b'"busy for you"' in body and b"kept for other members" in body
        # Bob gets the slot kept free, at once and whole, while mallory still holds hers.
        started = time.monotonic()
        for target, data in (("/files/small.bin", SMALL), ("/files/medium.bin", MEDIUM)):
            status, _, body = await trio.to_thread.run_sync(get, s.port, s.bob, target)
            assert (status, hashlib.sha256(body).digest()) == (200, hashlib.sha256(data).digest())
        assert time.monotonic() - started < 1.9  # no wait for a slot (the wait is 2 s)
        assert not any(reader.ended.is_set() for reader in trickles)
        for reader in trickles:
            reader.stop.set()


async def test_slow_readers_are_ended_when_others_wait_for_a_slot(tmp_path: Path) -> None:
    """Under the floor for a window while someone waits: the slot goes to the waiter."""
    async with serving(tmp_path, slots=4, floor=256 * KiB, window=1.0) as s:
        trickles = [Reader(s.port, s.mallory, "/files/big.bin", 4 * KiB, 0.1) for _ in range(3)]
        for reader in trickles:
            reader.start()
        await until(lambda: s.server.slots.active == 3, "mallory's three slots")
        # Bob reads well above the floor (~1.6 MB/s) but long enough (~5 s) to hold the
        # last slot while carol comes: only the trickles can make room for her.
        fast = Reader(s.port, s.bob, "/files/big.bin", 32 * KiB, 0.02).start()
        await until(lambda: s.server.slots.active == 4, "every slot to be taken")
        await trio.sleep(2.5)  # past a whole window of trickling
        assert not any(reader.ended.is_set() for reader in trickles)  # nobody waited yet
        started = time.monotonic()
        status, _, body = await trio.to_thread.run_sync(get, s.port, s.carol, "/files/small.bin")
        waited = time.monotonic() - started
        assert (status, body) == (200, SMALL), body[:300]
        assert waited < 1.9, waited  # served within the wait for a slot, not refused after it
        await until(lambda: all(r.ended.is_set() for r in trickles), "the trickles to end")
        assert not any(reader.complete for reader in trickles)
        assert s.server.stats.refused["too slow"] >= 1
        # Bob read briskly all along: never ended, his file whole.
        await until(fast.ended.is_set, "bob's download", limit=60)
        assert fast.complete and bytes(fast.received) == BIG


async def test_a_rate_limit_that_slows_everyone_ends_no_upload(tmp_path: Path) -> None:
    """400 KiB/s for all: two uploads get ~200 KiB/s each, under a 512 KiB/s floor, while
    carol is refused again and again; they wait for the limit, not for their readers."""
    async with serving(tmp_path, slots=2, rate_limit=400 * KiB, floor=512 * KiB, window=1.0) as s:
        readers = [
            Reader(s.port, who, target, 64 * KiB, 0.0).start()
            for who, target in ((s.mallory, "/files/medium.bin"), (s.bob, "/files/medium2.bin"))
        ]
        await until(lambda: s.server.slots.active == 2, "both uploads to start")
        refusals = 0
        while not all(reader.ended.is_set() for reader in readers):
            status, _, body = await trio.to_thread.run_sync(
                get, s.port, s.carol, "/files/small.bin"
            )
            if status == 503:
                assert b'"busy"' in body, body[:300]
                refusals += 1
        assert refusals >= 1
        assert all(reader.complete for reader in readers)
        assert [bytes(r.received) for r in readers] == [MEDIUM, MEDIUM]
        assert s.server.stats.refused["too slow"] == 0
