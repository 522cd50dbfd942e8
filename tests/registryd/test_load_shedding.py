"""Under overload the registry answers 503 + Retry-After at once, before any work.

The real HTTP server and RegistryApp on real sockets, in this process so that
the store can be held busy: its nonce check waits on an event, as a slow
Redis would make it wait.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from p2pcommon.http.server import HttpServer
from p2pcommon.signing.signer import Signer
from registryd.app import RegistryApp
from registryd.guards import SHED_RETRY_AFTER, LoadShedder
from registryd.metrics import RegistryMetrics
from registryd.store import MemoryStore
from tests.support import SECRET, Peer

MAX_IN_PROGRESS = 3


class HeldStore(MemoryStore):
    """The memory store, whose nonce checks wait for ``release`` once ``hold()`` is called."""

    def __init__(self) -> None:
        super().__init__()
        self.release: trio.Event | None = None
        self.nonce_checks = 0

    def hold(self) -> None:
        self.release = trio.Event()

    async def remember_nonce(self, nonce: str, expires_at: float, now: float) -> bool:
        self.nonce_checks += 1
        if self.release is not None:
            await self.release.wait()
        return await super().remember_nonce(nonce, expires_at, now)


Answer = tuple[int, dict[str, str], bytes]


@asynccontextmanager
async def serving(store: MemoryStore) -> AsyncIterator[tuple[HttpServer, int]]:
    """A registry app on ``store`` with a shedding bound of MAX_IN_PROGRESS, on loopback."""
    app = RegistryApp(
        Signer(SECRET), store, RegistryMetrics(), shedder=LoadShedder(MAX_IN_PROGRESS)
    )
    server = HttpServer(app.handle)
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(server.run, listeners)
        yield server, listeners[0].socket.getsockname()[1]


async def exchange_start(
    port: int, method: str, path: str, payload: object = None, member: Peer | None = None
) -> tuple[trio.SocketStream, str]:
    """Open a connection and send one signed request; the answer is read later."""
    body = b"" if payload is None else json.dumps(payload).encode()
    headers, nonce = Signer(SECRET).sign_request(method, path, body, now=time.time())
    if member is not None:
        member.add_proof(headers, method, path, nonce)
    lines = [f"{method} {path} HTTP/1.1", "Host: registry", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return stream, nonce


async def read_answer(stream: trio.SocketStream) -> Answer:
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    while len(body) < int(headers["content-length"]):
        body += await stream.receive_some(65536)
    return int(status_line.split()[1]), headers, body


async def test_past_the_bound_requests_get_503_at_once_while_the_held_ones_complete() -> None:
    store = HeldStore()
    peer = Peer.new()
    async with serving(store) as (server, port):
        register = {"id": peer.id, "name": "a", "cert": peer.cert, "port": 7070}
        stream, _ = await exchange_start(port, "POST", "/register", register, peer)
        status, _, answer = await read_answer(stream)
        assert status == 200
        await stream.aclose()
        heartbeat = {"id": peer.id, "lease": json.loads(answer)["lease"]}

        store.hold()
        checks_before = store.nonce_checks
        held = [
            await exchange_start(port, "POST", "/heartbeat", heartbeat)
            for _ in range(MAX_IN_PROGRESS)
        ]
        await trio.testing.wait_all_tasks_blocked()
        assert store.nonce_checks == checks_before + MAX_IN_PROGRESS

        # The excess is answered while the store is still held, without reaching it.
        shed = []
        # Bounded: were they not shed, they would wait for the store forever.
        with trio.fail_after(10):
            for _ in range(2):
                stream, _ = await exchange_start(port, "POST", "/heartbeat", heartbeat)
                shed.append(await read_answer(stream))
                await stream.aclose()
        assert store.nonce_checks == checks_before + MAX_IN_PROGRESS
        for status, headers, body in shed:
            assert status == 503
            low, high = SHED_RETRY_AFTER
            assert low <= int(headers["retry-after"]) <= high
            assert json.loads(body)["error"] == "overloaded"

        # Load balancers still get their answer, and operators their figures.
        for path in ("/healthz", "/metrics"):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: registry\r\n\r\n".encode())
            status, _, body = await read_answer(stream)
            await stream.aclose()
            assert status == 200
        assert "registry_shed_total 2.0" in body.decode()

        assert store.release is not None
        store.release.set()
        for stream, nonce in held:
            status, headers, body = await read_answer(stream)
            await stream.aclose()
            assert status == 200, body
            Signer(SECRET).verify_response(
                status, headers.items(), body, nonce=nonce, now=time.time()
            )
        # Nothing is counted as in progress once everything is answered.
        await trio.testing.wait_all_tasks_blocked()
        assert server.in_progress == 0
        await server.shutdown(1)


def test_turned_away_clients_are_told_to_come_back_at_different_times() -> None:
    shedder = LoadShedder(10, rng=random.Random(7))
    assert shedder.retry_after(10) is None
    waits = [shedder.retry_after(11) for _ in range(200)]
    low, high = SHED_RETRY_AFTER
    assert set(waits) == set(range(low, high + 1))


async def test_stalled_half_requests_do_not_shed_anyone_else() -> None:
    # An attacker opens many connections and sends one byte on each: they
    # hold connections (bounded per address), never the shedding budget, so a
    # member's whole, signed heartbeat is still served.
    peer = Peer.new()
    async with serving(MemoryStore()) as (server, port):
        stalled = []
        for _ in range(MAX_IN_PROGRESS * 4):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"P")
            stalled.append(stream)
        await trio.testing.wait_all_tasks_blocked()
        assert server.in_progress == 0

        with trio.fail_after(10):
            stream, _ = await exchange_start(
                port,
                "POST",
                "/register",
                {"id": peer.id, "name": "a", "cert": peer.cert, "port": 7070},
                peer,
            )
            status, _, body = await read_answer(stream)
        await stream.aclose()
        assert status == 200, body
        for stream in stalled:
            await stream.aclose()
        await server.shutdown(1)
