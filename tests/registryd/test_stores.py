"""Both stores answer alike (docs/protocol.md §3.5): the memory store, and Redis for real.

Each behaviour runs on the memory store and on a RedisStore over a real
redis-server; two RedisStores on one server stand for two registryd sharing it.
Then what only Redis has: its layout, its own expiry, the bounded cleanup,
orphaned index entries dropped when read, the processes alive.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from registryd.redis_store import EXPIRY, IDS, KEY_GRACE, NAMES, PROCESSES, RedisStore, member_key
from registryd.store import MemoryStore, NewMembersLimited, Store, WrongLease
from tests.redis_process import running_redis
from tests.support import Peer

ADDRESS = ("10.0.0.1:7070",)
LEASE = "5e" * 32
OTHER_LEASE = "6f" * 32
TTL = 30.0


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    url = request.getfixturevalue("redis_url")
    redis.Redis.from_url(url).flushall()
    made = RedisStore(url)
    yield made
    await made.aclose()


async def join(
    store: Store, peer: Peer, now: float, *, ttl: float = TTL, name: str | None = None
) -> bool:
    registered = await store.register(
        peer.id, name or peer.name, peer.cert, ADDRESS, now, ttl=ttl, lease_hash=LEASE
    )
    return registered.new


async def test_register_renew_leave(store: Store) -> None:
    now = time.time()
    alice, bob = Peer.new("alice"), Peer.new("bob")
    assert await join(store, alice, now)
    registered = await store.register(
        bob.id, "bob", bob.cert, ADDRESS, now, ttl=TTL, lease_hash=LEASE
    )
    assert (registered.new, registered.members) == (True, 2)
    assert not await join(store, alice, now + 1)  # was live
    assert await store.renew(alice.id, now + 2, ttl=60.0, lease_hash=LEASE) == 2
    with pytest.raises(WrongLease):
        await store.renew(alice.id, now + 2, ttl=TTL, lease_hash=OTHER_LEASE)
    with pytest.raises(WrongLease):
        await store.leave(alice.id, now + 2, lease_hash=OTHER_LEASE)
    assert await store.renew("x" * 52, now + 2, ttl=TTL, lease_hash=LEASE) is None
    record = await store.get(alice.id, now + 3)
    assert record is not None
    assert (record.name, record.cert, record.addresses) == ("alice", alice.cert, ADDRESS)
    assert record.last_seen == pytest.approx(now + 2)
    assert record.expires_at == pytest.approx(now + 62)
    assert await store.leave(alice.id, now + 3, lease_hash=LEASE)
    assert not await store.leave(alice.id, now + 3, lease_hash=LEASE)
    assert await store.get(alice.id, now + 3) is None
    assert await store.count(now + 3) == 1


async def test_a_new_id_may_be_refused_a_member_never(store: Store) -> None:
    now = time.time()
    alice = Peer.new("alice")
    with pytest.raises(NewMembersLimited):
        await store.register(
            alice.id, "a", alice.cert, ADDRESS, now, ttl=TTL, lease_hash=LEASE, allow_new=False
        )
    assert await store.get(alice.id, now) is None
    await join(store, alice, now)
    renewed = await store.register(
        alice.id, "a", alice.cert, ADDRESS, now, ttl=TTL, lease_hash=LEASE, allow_new=False
    )
    assert not renewed.new


async def test_each_lease_runs_out_on_its_own(store: Store) -> None:
    now = time.time()
    short, long = Peer.new("short"), Peer.new("long")
    await join(store, short, now, ttl=5.0)
    await join(store, long, now, ttl=50.0)
    assert await store.get(short.id, now + 5.0) is None  # before any sweep
    assert [m.id for m in await store.members(now + 6)] == [long.id]
    assert await store.renew(short.id, now + 6, ttl=TTL, lease_hash=LEASE) is None
    assert await store.expire(now + 6) == [short.id]
    assert await store.expire(now + 6) == []  # once
    assert await store.count(now + 6) == 1
    # Registering again after the lease ran out is a new member, with its new name.
    assert await join(store, short, now + 7, name="again")
    assert [m.name for m in (await store.resolve("again", None, now + 7))[0]] == ["again"]


async def test_pages_and_resolution(store: Store) -> None:
    now = time.time()
    peers = sorted((Peer.new(f"p{i}") for i in range(12)), key=lambda p: p.id)
    for peer in peers:
        await join(store, peer, now, name="twin" if peer in peers[3:9] else peer.name)
    await join(store, peers[0], now, ttl=1.0)  # about to lapse
    later = now + 2
    walked, after = [], ""
    while True:
        page, following = await store.page(after, later, limit=4, certs=False)
        assert all(m.cert == "" for m in page)
        walked += [m.id for m in page]
        if following is None:
            break
        after = following
    assert walked == [p.id for p in peers[1:]]
    full, _ = await store.page("", later, limit=2, certs=True)
    assert [m.cert for m in full] == [p.cert for p in peers[1:3]]
    named, more = await store.resolve("twin", None, later, limit=4)
    assert ([m.id for m in named], more) == ([p.id for p in peers[3:7]], True)
    assert named[0].cert == peers[3].cert
    one = peers[5]
    assert [m.id for m in (await store.resolve("nobody", one.id, later))[0]] == [one.id]
    prefixed, _ = await store.resolve("nobody", one.id[:1], later, limit=100)
    assert [m.id for m in prefixed] == [p.id for p in peers[1:] if p.id[0] == one.id[0]]
    # Names and prefixes together, each member once.
    both, _ = await store.resolve("twin", one.id[:3], later)
    assert [m.id for m in both] == [p.id for p in peers[3:9]]


async def test_a_renamed_member_is_found_by_its_new_name_only(store: Store) -> None:
    now = time.time()
    alice = Peer.new("alice")
    await join(store, alice, now)
    await join(store, alice, now + 1, name="alicia")
    assert (await store.resolve("alice", None, now + 1))[0] == []
    assert [m.name for m in (await store.resolve("alicia", None, now + 1))[0]] == ["alicia"]


async def test_processes(store: Store) -> None:
    assert await store.processes(time.time()) == 1


# -- Redis only ---------------------------------------------------------------------


async def test_two_instances_share_one_view(redis_url: str) -> None:
    redis.Redis.from_url(redis_url).flushall()
    a, b = RedisStore(redis_url), RedisStore(redis_url)
    now = time.time()
    alice = Peer.new("alice")
    await join(a, alice, now)
    assert await b.renew(alice.id, now + 1, ttl=TTL, lease_hash=LEASE) == 1
    assert [m.id for m in (await b.resolve("alice", None, now + 1))[0]] == [alice.id]
    assert (await a.processes(now), await b.processes(now)) == (1, 2)
    await a.aclose()  # a clean stop takes its share back at once
    assert await b.processes(now) == 1
    await b.aclose()


async def test_the_layout_and_redis_own_expiry(redis_url: str) -> None:
    server = redis.Redis.from_url(redis_url, decode_responses=True)
    server.flushall()
    store = RedisStore(redis_url)
    now = time.time()
    alice = Peer.new("alice")
    await join(store, alice, now, ttl=TTL)
    fields = server.hgetall(member_key(alice.id))
    assert set(fields) == {"name", "cert", "addresses", "seen", "exp", "lease"}
    assert float(fields["exp"]) == pytest.approx(now + TTL)
    assert json.loads(fields["addresses"]) == list(ADDRESS)
    assert 0 < server.pttl(member_key(alice.id)) <= (TTL + KEY_GRACE) * 1000
    assert server.zrange(IDS, 0, -1) == [alice.id]
    assert server.zrange(NAMES, 0, -1) == [f"alice\0{alice.id}"]
    assert server.zscore(EXPIRY, alice.id) == pytest.approx(now + TTL)
    assert await store.get(alice.id, now) is not None
    await store.processes(now)
    assert server.zcard(PROCESSES) == 1
    await store.aclose()


async def test_the_cleanup_is_bounded_and_takes_the_expired_only(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = redis.Redis.from_url(redis_url)
    server.flushall()
    store = RedisStore(redis_url)
    now = time.time()
    stayer = Peer.new("stayer")
    await join(store, stayer, now, ttl=100.0)
    # 2 500 lapsed members written straight into the indexes, as the register script does.
    pipe = server.pipeline(transaction=False)
    for number in range(2500):
        member_id = f"{number:052d}".translate(str.maketrans("0123456789", "abcdefghij"))
        pipe.hset(member_key(member_id), mapping={"name": "gone", "exp": now - 1})
        pipe.zadd(IDS, {member_id: 0})
        pipe.zadd(NAMES, {f"gone\0{member_id}": 0})
        pipe.zadd(EXPIRY, {member_id: now - 1})
    pipe.execute()
    # One script takes EXPIRE_BATCH at most, one round EXPIRE_ROUNDS scripts.
    monkeypatch.setattr("registryd.redis_store.EXPIRE_ROUNDS", 1)
    assert len(await store.expire(now)) == 1000
    monkeypatch.setattr("registryd.redis_store.EXPIRE_ROUNDS", 10)
    assert len(await store.expire(now)) == 1500
    assert (server.zcard(IDS), server.zcard(NAMES), server.zcard(EXPIRY)) == (1, 1, 1)
    assert server.dbsize() == 4  # the stayer's hash and the three indexes
    await store.aclose()


async def test_index_entries_of_vanished_members_are_dropped_when_read(redis_url: str) -> None:
    server = redis.Redis.from_url(redis_url)
    server.flushall()
    store = RedisStore(redis_url)
    now = time.time()
    ghost, alice = Peer.new("ghost"), Peer.new("alice")
    await join(store, ghost, now, name="twin")
    await join(store, alice, now, name="twin")
    server.delete(member_key(ghost.id))  # what Redis's own expiry does after an outage
    named, _ = await store.resolve("twin", None, now)
    assert [m.id for m in named] == [alice.id]
    page, _ = await store.page("", now, limit=10, certs=True)
    assert [m.id for m in page] == [alice.id]
    assert server.zrange(IDS, 0, -1) == [alice.id.encode()]
    assert server.zrange(NAMES, 0, -1) == [f"twin\0{alice.id}".encode()]
    await store.aclose()


@pytest.mark.parametrize(
    "damage",
    [{"addresses": "not json ["}, {"name": "n" * 500}, {"cert": "no certificate"}, {"seen": "x"}],
)
async def test_an_odd_record_is_skipped_in_every_answer(
    redis_url: str, damage: dict[str, str]
) -> None:
    server = redis.Redis.from_url(redis_url)
    server.flushall()
    store = RedisStore(redis_url)
    now = time.time()
    good, odd = Peer.new("good"), Peer.new("odd")
    await join(store, good, now, name="same")
    await join(store, odd, now, name="same")
    for field, value in damage.items():
        server.hset(member_key(odd.id), field, value)
    assert await store.get(odd.id, now) is None
    assert [m.id for m in (await store.resolve("same", None, now))[0]] == [good.id]
    assert [m.id for m in (await store.page("", now, limit=10, certs=True))[0]] == [good.id]
    assert [m.id for m in await store.members(now)] == [good.id]
    await store.aclose()
