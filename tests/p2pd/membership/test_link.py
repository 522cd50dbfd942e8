"""p2pd's registry link: register, heartbeat at the registry's pace, re-register.

The registry is the real RegistryApp on a real socket, behind a front that
counts the requests and can answer some with 503 as an overloaded registry
does.  Peers spread over their registries: the client's part of it.  The
link keeps no member list: it asks for none (p2pd.membership.directory
looks members up), and records the pace and the member count.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from p2pcommon.http.events import Request, Response, error_response
from p2pcommon.http.server import HttpServer
from p2pcommon.registry_client import DRIFT_BACK, RegistryClient, home_index
from p2pcommon.signing.signer import Signer
from p2pd.membership.directory import Directory
from p2pd.membership.link import RegistryLink
from registryd.app import RegistryApp
from registryd.metrics import RegistryMetrics
from registryd.pace import Pace
from registryd.store import MemoryStore
from tests.support import SECRET, Peer, free_port

#: The registry's peer_ttl: it advises heartbeats every TTL/3 (plus up to 10 % jitter),
#: which the link follows although its own interval (below) is shorter.
TTL = 1.5
INTERVAL = 0.05


class Front:
    """In front of a real RegistryApp: counts requests, sheds some with 503."""

    def __init__(self, app: RegistryApp) -> None:
        self.app = app
        self.counts: Counter[str] = Counter()
        self.registered: Counter[str] = Counter()
        #: Path -> how many of the next requests to it get 503, and the Retry-After sent.
        self.shed: dict[str, tuple[int, str | None]] = {}
        self._waiters: list[tuple[str, int, trio.Event]] = []

    async def handle(self, request: Request) -> Response:
        path = request.path
        count, retry_after = self.shed.get(path, (0, None))
        if count:
            self.shed[path] = (count - 1, retry_after)
            headers = [] if retry_after is None else [("Retry-After", retry_after)]
            response = error_response(503, "overloaded", "try later", headers)
        else:
            response = await self.app.handle(request)
            if path == "/register" and response.status == 200:
                self.registered[json.loads(request.body)["id"]] += 1
        self.counts[path] += 1
        for waiter in self._waiters:
            if waiter[0] == path and self.counts[path] >= waiter[1]:
                waiter[2].set()
        return response

    async def wait_count(self, path: str, count: int) -> None:
        """Until ``count`` requests to ``path`` have been answered in all."""
        event = trio.Event()
        self._waiters.append((path, count, event))
        if self.counts[path] >= count:
            event.set()
        with trio.fail_after(10):
            await event.wait()


Handler = Callable[[Request], Awaitable[Response]]


@asynccontextmanager
async def serving(front: Front | Handler, port: int = 0) -> AsyncIterator[str]:
    server = HttpServer(front.handle if isinstance(front, Front) else front)
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        await nursery.start(server.run, listeners)
        yield f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        await server.shutdown(1)
        nursery.cancel_scope.cancel()


def new_front(store: MemoryStore | None = None) -> Front:
    store = store or MemoryStore()
    pace = Pace(peer_ttl=TTL)
    return Front(RegistryApp(Signer(SECRET), store, RegistryMetrics(), pace=pace))


@asynccontextmanager
async def linked(urls: list[str], peer: Peer) -> AsyncIterator[tuple[RegistryLink, Directory]]:
    async with RegistryClient(urls, SECRET, timeout=2.0) as client:
        directory = Directory(peer.id, client, interval=INTERVAL)
        link = RegistryLink(
            client, peer.registration(), directory, prove=peer.prove, heartbeat_interval=INTERVAL
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.run)
            yield link, directory
            nursery.cancel_scope.cancel()


async def test_the_link_keeps_the_advised_pace_and_the_count_and_lists_nobody() -> None:
    front = new_front()
    alice, bob, carol = Peer.new("alice"), Peer.new("bob"), Peer.new("carol")
    async with serving(front) as url, RegistryClient([url], SECRET) as other:
        await other.register(carol.registration(), carol.prove)
        async with linked([url], alice) as (link, directory):
            assert directory.interval == INTERVAL  # nothing advised yet
            await front.wait_count("/register", 2)
            started = trio.current_time()
            await front.wait_count("/heartbeat", 3)
            took = trio.current_time() - started
            # The advised interval (TTL/3, jittered), not our own 20 times shorter one.
            assert directory.advised_interval is not None
            assert TTL / 3 <= directory.advised_interval <= TTL / 3 * 1.1
            # Answers are kept the shorter of the two (a tighter refusal delay).
            assert directory.interval == INTERVAL
            assert took >= 3 * TTL / 3 * 0.9
            assert directory.peers == 1  # carol; `status` and the metrics show it

            async def counted(peers: int) -> None:
                # The registry's count is approximate (its census runs once a second).
                with trio.fail_after(15):
                    while directory.peers != peers:
                        await front.wait_count("/heartbeat", front.counts["/heartbeat"] + 1)

            bob_lease = await other.register(bob.registration(), bob.prove)
            await counted(2)
            await other.leave(bob.id, bob_lease.lease)
            await counted(1)
            # Nothing was listed: members are looked up when needed.
            assert front.counts["/clients"] == front.counts["/members"] == 0
            assert front.registered[alice.id] == 1


def status(link: RegistryLink) -> tuple[bool, str | None]:
    """What `p2pctl status` shows of the registry."""
    return link.registered, link.error


async def test_an_overloaded_heartbeat_is_retried_as_a_heartbeat() -> None:
    front = new_front()
    alice = Peer.new("alice")
    async with serving(front) as url, linked([url], alice) as (link, _):
        await front.wait_count("/heartbeat", 2)
        front.shed["/heartbeat"] = (2, "1")
        await front.wait_count("/heartbeat", 4)
        registered, error = status(link)
        assert registered  # the lease is still live
        assert error is not None and "heartbeat failed" in error
        await front.wait_count("/heartbeat", 6)
        assert status(link) == (True, None)
        # Without Retry-After: backoff, never longer than half the heartbeat interval.
        front.shed["/heartbeat"] = (3, None)
        await front.wait_count("/heartbeat", 10)
        assert front.registered[alice.id] == 1
        assert front.counts["/register"] == 1


async def test_a_registry_that_forgot_us_gets_a_new_register() -> None:
    store = MemoryStore()
    front = new_front(store)
    alice = Peer.new("alice")
    async with serving(front) as url, linked([url], alice) as (link, _):
        await front.wait_count("/heartbeat", 1)
        store._table.leave(alice.id)  # as a restarted registry would have
        await front.wait_count("/register", 2)
        assert front.registered[alice.id] == 2
        await front.wait_count("/heartbeat", front.counts["/heartbeat"] + 2)
        assert link.registered


# -- spreading over registries ------------------------------------------------------


def test_homes_spread_evenly() -> None:
    rng = random.Random(3)
    homes = Counter(home_index("".join(rng.choices("abcdefgh", k=52)), 3) for _ in range(3000))
    assert all(800 < homes[i] < 1200 for i in range(3))
    assert home_index("a" * 52, 1) == 0


async def test_a_peer_starts_at_home_fails_over_and_drifts_back() -> None:
    store = MemoryStore()  # two registryd on one store, as on one Redis
    home_front, other_front = new_front(store), new_front(store)
    peer = Peer.new()
    home_port = free_port()
    elsewhere = 1 - home_index(peer.id, 2)
    now = [0.0]
    async with serving(other_front) as other_url:
        urls = ["", ""]
        urls[elsewhere], urls[1 - elsewhere] = other_url, f"http://127.0.0.1:{home_port}"
        async with RegistryClient(urls, SECRET, monotonic=lambda: now[0]) as client:
            client.spread(peer.id)
            assert client.current_url == urls[1 - elsewhere]
            lease = await client.register(peer.registration(), peer.prove)  # home is down
            assert client.current_url == other_url
            async with serving(home_front, home_port):
                await client.heartbeat(peer.id, lease.lease)
                assert client.current_url == other_url  # not straight back: no flapping
                now[0] += DRIFT_BACK
                await client.heartbeat(peer.id, lease.lease)
                assert client.current_url == urls[1 - elsewhere]
                assert home_front.counts["/heartbeat"] == 1
                await client.members_page()
                assert home_front.counts["/members"] == 1


async def test_one_registry_behaves_as_before() -> None:
    front = new_front()
    peer = Peer.new()
    async with serving(front) as url, RegistryClient([url], SECRET) as client:
        client.spread(peer.id)
        assert client.current_url == url
        assert (await client.register(peer.registration(), peer.prove)).members == 1


async def test_a_registry_holding_another_lease_gets_a_new_register() -> None:
    """403 wrong lease: we registered again elsewhere since (or another process has our
    identity); only the key's holder can have, so the link proves it again."""
    front = new_front()
    alice = Peer.new("alice")
    async with (
        serving(front) as url,
        linked([url], alice) as (link, _),
        RegistryClient([url], SECRET) as elsewhere,
    ):
        await front.wait_count("/heartbeat", 1)
        await elsewhere.register(alice.registration(), alice.prove)
        await front.wait_count("/register", 3)  # the link's first, elsewhere's, the link's again
        beats = front.counts["/heartbeat"]
        await front.wait_count("/heartbeat", beats + 2)
        assert status(link) == (True, None)
        assert front.registered[alice.id] == 3
