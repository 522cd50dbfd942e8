"""p2pd's registry link: register, heartbeat, re-register; the member list it keeps.

The registry is the real RegistryApp on a real socket, behind a front that
counts the requests and can answer some with 503 as an overloaded registry
does.  Peers spread over their registries: the client's part of it.  (The
link still fetches the whole list after each heartbeat: an interim, until
p2pd looks members up, docs/protocol.md §3.4.)
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import trio

from p2pcommon.http.events import Request, Response, error_response
from p2pcommon.http.server import HttpServer
from p2pcommon.models import Member
from p2pcommon.registry_client import DRIFT_BACK, RegistryClient, home_index
from p2pcommon.signing.signer import Signer
from p2pd.membership.link import RegistryLink
from p2pd.membership.members import Members
from registryd.app import RegistryApp
from registryd.metrics import RegistryMetrics
from registryd.pace import Pace
from registryd.store import MemoryStore
from tests.support import SECRET, Peer, free_port

#: The registry's ttl: heartbeats every ttl/3 at most, the link's own interval below.
TTL = 6.0
INTERVAL = 0.1


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


class Watcher:
    """A Members listener, as the TLS contexts are: who joined and left, in order."""

    def __init__(self, members: Members) -> None:
        self.events: list[tuple[list[str], list[str]]] = []
        self._changed = trio.Event()
        members.add_listener(self._heard)

    def _heard(self, joined: Sequence[Member], left: Sequence[Member]) -> None:
        self.events.append(([m.name for m in joined], [m.name for m in left]))
        self._changed.set()

    async def next(self) -> tuple[list[str], list[str]]:
        with trio.fail_after(10):
            await self._changed.wait()
        self._changed = trio.Event()
        return self.events[-1]


@asynccontextmanager
async def linked(
    urls: list[str], peer: Peer, members: Members | None = None
) -> AsyncIterator[tuple[RegistryLink, Members]]:
    members = members or Members.empty(peer.id)
    async with RegistryClient(urls, SECRET, timeout=2.0) as client:
        link = RegistryLink(
            client, peer.registration(), members, prove=peer.prove, heartbeat_interval=INTERVAL
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.run)
            yield link, members
            nursery.cancel_scope.cancel()


async def test_the_member_list_follows_the_registry() -> None:
    front = new_front()
    alice, bob, carol = Peer.new("alice"), Peer.new("bob"), Peer.new("carol")
    async with serving(front) as url, RegistryClient([url], SECRET) as other:
        await other.register(carol.registration(), carol.prove)
        members = Members.empty(alice.id)
        watcher = Watcher(members)
        async with RegistryClient([url], SECRET) as client:
            link = RegistryLink(
                client,
                alice.registration(),
                members,
                prove=alice.prove,
                heartbeat_interval=INTERVAL,
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(link.run)
                assert await watcher.next() == (["carol"], [])
                bob_lease = await other.register(bob.registration(), bob.prove)
                assert await watcher.next() == (["bob"], [])
                assert members.get(bob.id) is not None
                await other.leave(bob.id, bob_lease.lease)
                assert await watcher.next() == ([], ["bob"])
                assert members.get(bob.id) is None
                assert front.registered[alice.id] == 1
                nursery.cancel_scope.cancel()


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
        # Without Retry-After: backoff, never longer than the heartbeat interval.
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


async def test_a_failed_refresh_keeps_the_list() -> None:
    front = new_front()
    alice, bob, carol = Peer.new("alice"), Peer.new("bob"), Peer.new("carol")
    async with serving(front) as url, RegistryClient([url], SECRET) as other:
        await other.register(carol.registration(), carol.prove)
        members = Members.empty(alice.id)
        watcher = Watcher(members)
        async with linked([url], alice, members):
            await watcher.next()
            asked = front.counts["/clients"]
            front.shed["/clients"] = (3, "1")
            await other.register(bob.registration(), bob.prove)
            await front.wait_count("/clients", asked + 3)  # the shed ones
            assert [m.name for m in members.others()] == ["carol"]
            assert await watcher.next() == (["bob"], [])  # asked again at the next heartbeat
            assert sorted(m.name for m in members.others()) == ["bob", "carol"]
            assert front.registered[alice.id] == 1


# -- members -------------------------------------------------------------------


def member(name: str, cert: str = "PEM", id: str | None = None) -> Member:
    return Member(id=id or name * 4, name=name, addresses=[], cert=cert, last_seen=0)


def test_apply_changes_only_what_the_delta_names() -> None:
    members = Members.empty("self")
    heard: list[tuple[list[str], list[str]]] = []
    members.add_listener(
        lambda j, left: heard.append(([m.name for m in j], [m.name for m in left]))
    )
    members.update([member("a"), member("b")])
    generation = members.generation
    assert members.apply([member("c"), member("self", id="self")], ["bbbb", "nobody"])
    assert sorted(m.name for m in members.others()) == ["a", "c"]
    assert members.generation == generation + 1
    # Addresses only: no change of who is a member, nothing for the listeners.
    moved = Member(id="aaaa", name="a", addresses=["10.0.0.9:1"], cert="PEM", last_seen=1)
    assert not members.apply([moved], [])
    assert members.get("aaaa") == moved
    assert members.generation == generation + 1
    # A new certificate: in both lists, membership unchanged.
    assert not members.apply([member("c", cert="NEW")], [])
    assert heard[-1] == (["c"], ["c"])
    assert heard[-2] == (["c"], ["b"])
    assert members.count() == 2


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
