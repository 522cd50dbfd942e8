"""Membership sync (docs/protocol.md §3.4): versions, the change log, deltas.

The pure table with plain numbers for time, the memory store, the app with
signed requests, and the Redis store on a real redis-server, where two
stores stand for two registryd instances sharing one Redis.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from p2pcommon.http.events import Response
from p2pcommon.registry_client import RegistryClient
from registryd.app import RegistryApp
from registryd.redis_store import RedisStore
from registryd.store import MemoryStore, Store
from registryd.table import Changes, RegistryTable
from tests.redis_process import running_redis
from tests.registryd.conftest import Clock, signed
from tests.support import SECRET, Peer, run_registryd

TTL = 30.0
ADDRESS = ("10.0.0.1:7070",)
#: The lease hash the stores are given (what the app derives from a lease token).
LEASE = "5e" * 32


def join(table: RegistryTable, id: str, now: float, address: tuple[str, ...] = ADDRESS) -> None:
    table.register(id, f"name-{id}", f"PEM-{id}", address, now)


def delta(changes: Changes) -> tuple[set[str], set[str]]:
    """Ids listed as joined or changed, and ids listed as gone, of a delta answer."""
    assert not changes.full
    return {e.id for e in changes.members}, set(changes.left)


# -- the pure table ------------------------------------------------------------


def test_joins_leaves_and_changes_since_a_version() -> None:
    table = RegistryTable(TTL, version=1000)
    for id in "xyz":
        join(table, id, 0.0)  # bystanders: a delta is never longer than the list
    join(table, "a", 0.0)
    join(table, "b", 0.0)
    assert table.version == 1005
    assert delta(table.changes_since(1003, 1.0)) == ({"a", "b"}, set())
    assert delta(table.changes_since(1004, 1.0)) == ({"b"}, set())
    assert delta(table.changes_since(1005, 1.0)) == (set(), set())
    table.leave("a")
    assert delta(table.changes_since(1005, 1.0)) == (set(), {"a"})
    # Joined and left after the cursor: only "left", once.
    assert delta(table.changes_since(1003, 1.0)) == ({"b"}, {"a"})


def test_the_delta_carries_the_current_record() -> None:
    table = RegistryTable(TTL, version=0)
    join(table, "a", 0.0)
    join(table, "a", 5.0, ("10.0.0.9:7070",))
    (entry,) = table.changes_since(0, 6.0).members
    assert (entry.addresses, entry.last_seen) == (("10.0.0.9:7070",), 5.0)


def test_heartbeats_and_unchanged_registers_keep_the_version() -> None:
    table = RegistryTable(TTL, version=7)
    join(table, "a", 0.0)
    assert table.renew("a", 10.0) is not None
    join(table, "a", 20.0)  # same name, certificate and addresses
    assert table.version == 8
    join(table, "a", 21.0, ("10.0.0.2:7070",))
    assert table.version == 9
    table.register("a", "renamed", "PEM-a", ("10.0.0.2:7070",), 22.0)
    table.register("a", "renamed", "PEM-new", ("10.0.0.2:7070",), 23.0)
    assert table.version == 11
    assert delta(table.changes_since(8, 24.0)) == ({"a"}, set())


def test_expiry_is_a_change() -> None:
    table = RegistryTable(TTL, version=0)
    join(table, "a", 0.0)
    join(table, "b", 10.0)
    before = table.version
    assert [e.id for e in table.expire(35.0)] == ["a"]
    assert table.version == before + 1
    assert delta(table.changes_since(before, 35.0)) == (set(), {"a"})


def test_an_expired_member_that_registers_again_is_a_change() -> None:
    table = RegistryTable(TTL, version=0)
    join(table, "a", 0.0)
    before = table.version
    join(table, "a", 40.0)  # lapsed, not yet swept: a new member for the others
    assert delta(table.changes_since(before, 41.0)) == ({"a"}, set())


def test_a_cursor_the_log_cannot_answer_gets_everything() -> None:
    table = RegistryTable(TTL, version=100, log_size=3)
    for id in "abcde":
        join(table, id, 0.0)  # versions 101..105; the log keeps 103..105
    everyone = {"a", "b", "c", "d", "e"}
    assert delta(table.changes_since(102, 1.0)) == ({"c", "d", "e"}, set())
    for cursor in (101, 100, 0, -1, 106, 10**20, None):
        changes = table.changes_since(cursor, 1.0)
        assert changes.full and changes.version == 105, cursor
        assert {e.id for e in changes.members} == everyone
        assert changes.left == []


def test_a_delta_longer_than_the_list_is_sent_as_the_list() -> None:
    table = RegistryTable(TTL, version=0)
    for id in "abc":
        join(table, id, 0.0)
    table.leave("a")
    table.leave("b")
    changes = table.changes_since(0, 1.0)  # 3 ids touched, 1 member left
    assert changes.full
    assert [e.id for e in changes.members] == ["c"]


def test_a_new_table_answers_only_its_own_version() -> None:
    table = RegistryTable(TTL, version=50)
    assert delta(table.changes_since(50, 0.0)) == (set(), set())
    assert table.changes_since(49, 0.0).full


# -- the memory store ----------------------------------------------------------


async def test_a_memory_store_starts_at_the_time_in_microseconds() -> None:
    before = int(time.time() * 1e6)
    store = MemoryStore(TTL)
    assert before <= await store.version(0.0) <= int(time.time() * 1e6)
    peer = Peer.new()
    assert await store.register(peer.id, "p", peer.cert, ADDRESS, 0.0, lease_hash=LEASE)
    version = await store.version(0.0)
    assert await store.renew(peer.id, 1.0, lease_hash=LEASE) == version
    assert await store.renew("x" * 52, 1.0, lease_hash=LEASE) is None
    # Another (or a restarted) registry's cursor: out of range, the whole list.
    other = MemoryStore(TTL)
    assert (await other.changes_since(version, 1.0)).full


# -- the app -------------------------------------------------------------------


async def call(app: RegistryApp, method: str, target: str, body: Any, now: float) -> Response:
    # Signed over @path: the query is not covered, as in docs/protocol.md §2.
    return await app.handle(signed(method, target, body, now=now))


def answer(response: Response) -> Any:
    assert response.status == 200, response.body
    return json.loads(response.body)


async def app_register(app: RegistryApp, peer: Peer, now: float, port: int = 7070) -> Any:
    body = {"id": peer.id, "name": peer.name, "cert": peer.cert, "port": port}
    return answer(await app.handle(signed("POST", "/register", body, now=now, member=peer)))


async def test_lease_answers_carry_the_version_and_heartbeats_keep_it(
    app: RegistryApp, clock: Clock
) -> None:
    alice = Peer.new("alice")
    registered = await app_register(app, alice, clock.now)
    assert set(registered) == {"ttl", "heartbeat_interval", "version", "lease"}
    body = {"id": alice.id, "lease": registered["lease"]}
    heartbeat = answer(await call(app, "POST", "/heartbeat", body, clock.now + 1))
    assert heartbeat["version"] == registered["version"]
    assert (await app_register(app, alice, clock.now + 2))["version"] == registered["version"]
    moved = await app_register(app, alice, clock.now + 3, port=7171)
    assert moved["version"] == registered["version"] + 1


async def test_clients_since_answers_what_changed(app: RegistryApp, clock: Clock) -> None:
    alice, bob, carol = Peer.new("alice"), Peer.new("bob"), Peer.new("carol")
    alice_lease = (await app_register(app, alice, clock.now))["lease"]
    await app_register(app, Peer.new("dave"), clock.now)
    listed = answer(await call(app, "GET", "/clients", None, clock.now))
    assert set(listed) == {"clients", "version"}  # the plain form, as before, plus version
    assert sorted(c["name"] for c in listed["clients"]) == ["alice", "dave"]
    cursor = listed["version"]

    await app_register(app, bob, clock.now)
    await app_register(app, carol, clock.now)
    leave = {"id": alice.id, "lease": alice_lease}
    assert answer(await call(app, "POST", "/leave", leave, clock.now))["ok"]
    changes = answer(await call(app, "GET", f"/clients?since={cursor}", None, clock.now))
    assert (changes["since"], changes["full"], changes["version"]) == (cursor, False, cursor + 3)
    assert sorted(c["name"] for c in changes["clients"]) == ["bob", "carol"]
    assert changes["left"] == [alice.id]
    (bob_record,) = [c for c in changes["clients"] if c["name"] == "bob"]
    assert set(bob_record) == {"id", "name", "addresses", "cert", "last_seen"}
    assert bob_record["cert"] == bob.cert

    current = answer(await call(app, "GET", f"/clients?since={cursor + 3}", None, clock.now))
    assert (current["clients"], current["left"], current["full"]) == ([], [], False)


@pytest.mark.parametrize("since", ["-1", "0", "99999999999999999999999"])
async def test_a_cursor_out_of_range_gets_the_full_list(
    app: RegistryApp, clock: Clock, since: str
) -> None:
    await app_register(app, Peer.new("alice"), clock.now)
    changes = answer(await call(app, "GET", f"/clients?since={since}", None, clock.now))
    assert (changes["full"], changes["since"], changes["left"]) == (True, int(since), [])
    assert [c["name"] for c in changes["clients"]] == ["alice"]


@pytest.mark.parametrize("query", ["since=", "since=abc", "since=1.5", "since=1&since=2"])
async def test_a_malformed_since_is_refused_naming_it(
    app: RegistryApp, clock: Clock, query: str
) -> None:
    response = await call(app, "GET", f"/clients?{query}", None, clock.now)
    assert response.status == 400
    assert "since" in json.loads(response.body)["message"]


async def test_an_expiry_reaches_peers_as_a_change(app: RegistryApp, clock: Clock) -> None:
    alice, bob = Peer.new("alice"), Peer.new("bob")
    await app_register(app, alice, clock.now)
    clock.now += 20
    cursor = (await app_register(app, bob, clock.now))["version"]
    clock.now += 11
    store = app._store  # the expire loop's view of it
    assert await store.expire(clock.now) == [alice.id]
    changes = answer(await call(app, "GET", f"/clients?since={cursor}", None, clock.now))
    assert (changes["clients"], changes["left"], changes["version"]) == ([], [alice.id], cursor + 1)


async def test_full_lists_come_from_a_snapshot_consistent_with_its_version(
    app: RegistryApp, clock: Clock
) -> None:
    # Peers that join together all ask for the full list: within a second they
    # share one snapshot, which carries the version it reflects, so a member
    # that joined meanwhile reaches them as the next delta.  The plain
    # GET /clients is never from the snapshot.
    await app_register(app, Peer.new("alice"), clock.now)
    first = answer(await call(app, "GET", "/clients?since=0", None, clock.now))
    await app_register(app, Peer.new("bob"), clock.now)
    clock.now += 0.5
    second = answer(await call(app, "GET", "/clients?since=0", None, clock.now))
    assert [c["name"] for c in second["clients"]] == ["alice"]
    assert second["version"] == first["version"]
    plain = answer(await call(app, "GET", "/clients", None, clock.now))
    assert sorted(c["name"] for c in plain["clients"]) == ["alice", "bob"]
    then = answer(await call(app, "GET", f"/clients?since={second['version']}", None, clock.now))
    assert ([c["name"] for c in then["clients"]], then["full"]) == (["bob"], False)

    clock.now += 1
    later = answer(await call(app, "GET", "/clients?since=0", None, clock.now))
    assert sorted(c["name"] for c in later["clients"]) == ["alice", "bob"]
    assert later["version"] == plain["version"]


# -- Redis: two stores on one server stand for two registryd instances ----------


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with running_redis(tmp_path) as url:
        yield url


def redis_pair(url: str, log_size: int = 10_000) -> tuple[RedisStore, RedisStore]:
    return RedisStore(url, TTL, log_size=log_size), RedisStore(url, TTL, log_size=log_size)


async def close(*stores: Store) -> None:
    for store in stores:
        await store.aclose()


async def test_redis_instances_share_the_version_and_the_log(redis_url: str) -> None:
    a, b = redis_pair(redis_url)
    now = time.time()
    start = await a.version(now)
    assert abs(start - now * 1e6) < 60e6  # started at the time in µs
    assert await b.version(now) == start
    alice, bob, carol = Peer.new("alice"), Peer.new("bob"), Peer.new("carol")
    assert await a.register(alice.id, "alice", alice.cert, ADDRESS, now, lease_hash=LEASE)
    assert await b.register(bob.id, "bob", bob.cert, ADDRESS, now, lease_hash=LEASE)
    assert await a.register(carol.id, "carol", carol.cert, ADDRESS, now, lease_hash=LEASE)
    assert await a.version(now) == await b.version(now) == start + 3
    assert (
        await a.renew(alice.id, now + 1, lease_hash=LEASE) == start + 3
    )  # the heartbeat's answer, one call
    assert await b.renew("x" * 52, now + 1, lease_hash=LEASE) is None

    changes = await b.changes_since(start, now + 1)
    assert delta(changes) == ({alice.id, bob.id, carol.id}, set())
    (record,) = [e for e in changes.members if e.id == alice.id]
    assert (record.name, record.cert, record.addresses) == ("alice", alice.cert, ADDRESS)
    assert record.last_seen == pytest.approx(now + 1, abs=1e-3)

    assert not await b.register(alice.id, "alice", alice.cert, ADDRESS, now + 2, lease_hash=LEASE)
    assert await a.version(now) == start + 3  # unchanged re-register
    await b.register(alice.id, "alice", alice.cert, ("10.0.0.5:7070",), now + 3, lease_hash=LEASE)
    assert await b.leave(bob.id, now + 3, lease_hash=LEASE)
    assert not await a.leave(bob.id, now + 3, lease_hash=LEASE)
    assert delta(await a.changes_since(start + 3, now + 3)) == ({alice.id}, {bob.id})
    await close(a, b)


async def test_redis_expiry_by_one_instance_is_seen_by_the_other(redis_url: str) -> None:
    a, b = redis_pair(redis_url)
    now = time.time()
    alice, bob = Peer.new("alice"), Peer.new("bob")
    await a.register(alice.id, "alice", alice.cert, ADDRESS, now, lease_hash=LEASE)
    await a.register(bob.id, "bob", bob.cert, ADDRESS, now + 20, lease_hash=LEASE)
    cursor = await a.version(now)
    assert await b.expire(now + 31) == [alice.id]
    assert await a.expire(now + 31) == []  # counted once
    assert delta(await a.changes_since(cursor, now + 31)) == (set(), {alice.id})
    await close(a, b)


async def test_redis_lapsed_members_are_left_before_the_sweep(redis_url: str) -> None:
    (a, _) = redis_pair(redis_url)
    now = time.time()
    alice = Peer.new("alice")
    cursor = await a.version(now)
    await a.register(alice.id, "alice", alice.cert, ADDRESS, now, lease_hash=LEASE)
    assert delta(await a.changes_since(cursor, now + 31)) == (set(), {alice.id})
    await close(a, _)


async def test_redis_log_trimmed_gives_the_full_list(redis_url: str) -> None:
    a, b = redis_pair(redis_url, log_size=3)
    now = time.time()
    start = await a.version(now)
    peers = [Peer.new(f"p{i}") for i in range(5)]
    for peer in peers:
        await a.register(peer.id, peer.name, peer.cert, ADDRESS, now, lease_hash=LEASE)
    assert delta(await b.changes_since(start + 2, now)) == ({p.id for p in peers[2:]}, set())
    for cursor in (start + 1, start, start + 6, -1):
        changes = await b.changes_since(cursor, now)
        assert changes.full and changes.version == start + 5
        assert {e.id for e in changes.members} == {p.id for p in peers}
    assert len(redis.Redis.from_url(redis_url).zrange("p2p:changes", 0, -1)) == 3
    await close(a, b)


async def test_redis_versions_restart_past_the_old_ones(redis_url: str) -> None:
    a, _ = redis_pair(redis_url)
    now = time.time()
    alice = Peer.new("alice")
    await a.register(alice.id, "alice", alice.cert, ADDRESS, now, lease_hash=LEASE)
    old = await a.version(now)
    redis.Redis.from_url(redis_url).flushall()  # a Redis restarted empty
    fresh = await a.version(now)
    assert fresh > old
    assert (await a.changes_since(old, now)).full
    await close(a, _)


async def test_a_peer_syncs_through_either_instance(tmp_path: Path, redis_url: str) -> None:
    env = {"REGISTRYD_STORE": redis_url}
    alice, bob, carol = Peer.new("alice"), Peer.new("bob"), Peer.new("carol")
    with run_registryd(tmp_path, env) as a, run_registryd(tmp_path, env) as b:
        async with (
            RegistryClient([a.url], SECRET) as via_a,
            RegistryClient([b.url], SECRET) as via_b,
        ):
            await via_a.register(carol.registration(), carol.prove)
            lease = await via_a.register(alice.registration(), alice.prove)
            listed = await via_b.member_changes(None)
            assert lease.version == listed.version
            assert sorted(m.name for m in listed.clients) == ["alice", "carol"]
            bob_lease = await via_b.register(bob.registration(), bob.prove)
            await via_b.leave(alice.id, lease.lease)
            changes = await via_a.member_changes(listed.version)
            assert (changes.full, changes.since) == (False, listed.version)
            assert [m.name for m in changes.clients] == ["bob"]
            assert changes.left == [alice.id]
            assert (await via_a.heartbeat(bob.id, bob_lease.lease)).version == changes.version
