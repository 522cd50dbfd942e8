"""Lookups, resolutions, pages and the pace through the app (docs/protocol.md §3.3–3.4).

The registry app on the memory store with signed requests and a clock the
test moves; the Redis store's side is tests/registryd/test_stores.py.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
import trio
import trio.testing

from p2pcommon.http.events import Request, Response
from p2pcommon.signing.signer import Signer
from registryd.app import RegistryApp
from registryd.guards import LookupLimiter
from registryd.metrics import RegistryMetrics
from registryd.pace import Pace
from registryd.store import MemoryStore
from registryd.table import Entry
from tests.registryd.conftest import Clock, signed
from tests.support import SECRET, Peer


def answer(response: Response) -> Any:
    assert response.status == 200, response.body
    return json.loads(response.body)


def refusal(response: Response) -> tuple[int, str]:
    return response.status, json.loads(response.body)["error"]


async def join(app: RegistryApp, peer: Peer, now: float, name: str | None = None) -> Any:
    body = {"id": peer.id, "name": name or peer.name, "cert": peer.cert, "port": 7070}
    return answer(await app.handle(signed("POST", "/register", body, now=now, member=peer)))


async def get(app: RegistryApp, target: str, now: float, host: str = "192.0.2.10") -> Response:
    # Signed over the path: the query is not covered (docs/protocol.md §2.1).
    request = signed("GET", target.partition("?")[0], now=now, host=host)
    request.target = target
    return await app.handle(request)


# -- one member -----------------------------------------------------------------------


async def test_a_member_is_looked_up_by_id(app: RegistryApp, clock: Clock) -> None:
    alice = Peer.new("alice")
    await join(app, alice, clock.now)
    record = answer(await get(app, f"/members/{alice.id}", clock.now))
    assert record == {
        "id": alice.id,
        "name": "alice",
        "addresses": ["192.0.2.10:7070"],
        "cert": alice.cert,
        "last_seen": clock.now,
    }
    head = await app.handle(signed("HEAD", f"/members/{alice.id}", now=clock.now))
    assert (head.status, head.body) == (200, json.dumps(record, separators=(",", ":")).encode())


async def test_an_unknown_or_departed_member_is_404(app: RegistryApp, clock: Clock) -> None:
    alice = Peer.new("alice")
    lease = (await join(app, alice, clock.now))["lease"]
    assert refusal(await get(app, f"/members/{'a' * 52}", clock.now)) == (404, "unknown member")
    leave = {"id": alice.id, "lease": lease}
    assert (await app.handle(signed("POST", "/leave", leave, now=clock.now))).status == 200
    gone = await get(app, f"/members/{alice.id}", clock.now)
    assert refusal(gone) == (404, "unknown member")
    assert "register" in json.loads(gone.body)["message"]


async def test_a_lapsed_member_is_404_before_any_sweep(app: RegistryApp, clock: Clock) -> None:
    alice = Peer.new("alice")
    await join(app, alice, clock.now)
    clock.now += 29.9
    assert (await get(app, f"/members/{alice.id}", clock.now)).status == 200
    clock.now += 0.1
    assert (await get(app, f"/members/{alice.id}", clock.now)).status == 404


@pytest.mark.parametrize(
    "member_id",
    ["abc", "A" * 52, "a" * 53, "a" * 51 + "1", "a" * 51 + "%61", "", "a" * 52 + "/x"],
)
async def test_a_malformed_id_is_400(app: RegistryApp, clock: Clock, member_id: str) -> None:
    response = await get(app, f"/members/{member_id}", clock.now)
    assert refusal(response) == (400, "bad request")
    assert "52 characters" in json.loads(response.body)["message"]


# -- what a user typed ------------------------------------------------------------------


async def test_resolve_by_name_full_id_and_prefix(app: RegistryApp, clock: Clock) -> None:
    alice, bob = Peer.new("alice"), Peer.new("bob")
    await join(app, alice, clock.now)
    await join(app, bob, clock.now)
    by_name = answer(await get(app, "/resolve/alice", clock.now))
    assert (by_name["query"], [m["id"] for m in by_name["members"]], by_name["more"]) == (
        "alice",
        [alice.id],
        False,
    )
    assert by_name["members"][0]["cert"] == alice.cert  # what ls needs to connect
    full = answer(await get(app, f"/resolve/{bob.id}", clock.now))
    assert [m["name"] for m in full["members"]] == ["bob"]
    # A prefix in capitals is an id prefix too: ids are lowercase.
    upper = answer(await get(app, f"/resolve/{bob.id[:7].upper()}", clock.now))
    assert [m["name"] for m in upper["members"]] == ["bob"]
    assert upper["query"] == bob.id[:7].upper()
    nothing = answer(await get(app, "/resolve/carol", clock.now))
    assert (nothing["members"], nothing["more"]) == ([], False)


async def test_resolve_says_there_are_more_past_ten(app: RegistryApp, clock: Clock) -> None:
    twins = [Peer.new("twin") for _ in range(12)]
    for twin in twins:
        await join(app, twin, clock.now)
    resolved = answer(await get(app, "/resolve/twin", clock.now))
    assert [m["id"] for m in resolved["members"]] == sorted(t.id for t in twins)[:10]
    assert resolved["more"] is True


async def test_a_name_in_any_script_is_percent_encoded(app: RegistryApp, clock: Clock) -> None:
    name = "Zoë's café / 東京"
    peer = Peer.new(name)
    await join(app, peer, clock.now)
    resolved = answer(await get(app, "/resolve/" + quote(name, safe=""), clock.now))
    assert (resolved["query"], [m["id"] for m in resolved["members"]]) == (name, [peer.id])


@pytest.mark.parametrize(
    "text",
    ["", "%0a", "a%00b", "%ff%fe", "x" * 65, quote("é" * 65), "%e2%80%ae" * 3 + "%01"],
)
async def test_a_text_that_is_no_peer_is_400(app: RegistryApp, clock: Clock, text: str) -> None:
    response = await get(app, f"/resolve/{text}", clock.now)
    assert refusal(response) == (400, "bad request")
    assert "printable" in json.loads(response.body)["message"]


# -- pages --------------------------------------------------------------------------------


async def test_pages_walk_every_member_once_in_id_order(app: RegistryApp, clock: Clock) -> None:
    peers = [Peer.new(f"p{i}") for i in range(7)]
    for peer in peers:
        await join(app, peer, clock.now)
    seen: list[str] = []
    after = ""
    while True:
        query = f"?after={after}&limit=3" if after else "?limit=3"
        page = answer(await get(app, "/members" + query, clock.now))
        assert (page["after"], page["limit"], page["certs"]) == (after or None, 3, 1)
        seen += [m["id"] for m in page["members"]]
        if page["next"] is None:
            break
        assert page["next"] == page["members"][-1]["id"]
        after = page["next"]
    assert seen == sorted(p.id for p in peers)


async def test_a_page_without_certificates(app: RegistryApp, clock: Clock) -> None:
    await join(app, Peer.new("alice"), clock.now)
    page = answer(await get(app, "/members?certs=0", clock.now))
    assert (page["certs"], page["limit"], page["next"]) == (0, 500, None)
    assert set(page["members"][0]) == {"id", "name", "addresses", "last_seen"}


@pytest.mark.parametrize(
    ("asked", "used"),
    [
        ("1000000", 1000),
        ("1001", 1000),
        ("0", 1),
        ("-5", 1),
        ("9" * 5000, 1000),
        ("-" + "9" * 40, 1),
    ],
)
async def test_a_limit_out_of_range_is_clamped(
    app: RegistryApp, clock: Clock, asked: str, used: int
) -> None:
    assert answer(await get(app, f"/members?limit={asked}", clock.now))["limit"] == used


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("limit=ten", "limit"),
        ("limit=1.5", "limit"),
        ("certs=yes", "certs"),
        ("after=ABC", "after"),
        ("after=" + "a" * 53, "after"),
        ("limit=1&limit=2", "limit"),
    ],
)
async def test_a_bad_query_is_400_naming_it(
    app: RegistryApp, clock: Clock, query: str, named: str
) -> None:
    response = await get(app, f"/members?{query}", clock.now)
    assert refusal(response) == (400, "bad request")
    assert repr(named) in json.loads(response.body)["message"]


# -- the whole list ---------------------------------------------------------------------


async def test_the_whole_list_keeps_its_shape_from_a_snapshot_of_a_second(
    app: RegistryApp, clock: Clock
) -> None:
    await join(app, Peer.new("alice"), clock.now)
    first = answer(await get(app, "/clients", clock.now))
    assert list(first) == ["clients"]
    assert [c["name"] for c in first["clients"]] == ["alice"]
    await join(app, Peer.new("bob"), clock.now)
    clock.now += 0.5
    assert answer(await get(app, "/clients", clock.now)) == first
    clock.now += 0.6
    later = answer(await get(app, "/clients", clock.now))
    assert sorted(c["name"] for c in later["clients"]) == ["alice", "bob"]
    # ``since`` of older peers is ignored: the whole list.
    assert answer(await get(app, "/clients?since=5", clock.now)) == later


class SlowStore(MemoryStore):
    """The memory store, whose whole list takes a while and is counted."""

    def __init__(self) -> None:
        super().__init__()
        self.lists = 0

    async def members(self, now: float) -> list[Entry]:
        self.lists += 1
        await trio.sleep(0.2)
        return await super().members(now)


async def test_whole_lists_asked_together_are_built_once(
    clock: Clock, autojump_clock: trio.testing.MockClock
) -> None:
    store = SlowStore()
    app = RegistryApp(Signer(SECRET), store, RegistryMetrics(), clock=clock)
    await join(app, Peer.new("alice"), clock.now)
    answers: list[Any] = []

    async def ask(number: int) -> None:
        answers.append(answer(await get(app, "/clients", clock.now, host=f"192.0.2.{number}")))

    async with trio.open_nursery() as nursery:
        for number in range(1, 6):
            nursery.start_soon(ask, number)
    assert store.lists == 1
    assert [len(a["clients"]) for a in answers] == [1] * 5


# -- the pace -----------------------------------------------------------------------------


async def test_lease_answers_carry_the_pace_of_the_membership(clock: Clock) -> None:
    # 2 heartbeats a second for the process: 40 members every 20 s.
    pace = Pace(peer_ttl=30.0, heartbeat_budget=2.0, max_heartbeat_interval=25.0)
    pace.jitter = lambda: 0.0
    app = RegistryApp(Signer(SECRET), MemoryStore(), RegistryMetrics(), pace=pace, clock=clock)
    leases = [await join(app, Peer.new(f"p{i}"), clock.now) for i in range(60)]
    assert leases[0]["heartbeat_interval"] == 10.0  # with nobody counted yet
    assert [lease["members"] for lease in leases] == list(range(1, 61))
    # The interval follows the count of the answer before.
    assert leases[40]["heartbeat_interval"] == 20.0
    assert leases[59]["heartbeat_interval"] == 25.0  # the maximum
    assert leases[59]["ttl"] == 75.0
    metrics = (await app.handle(Request("GET", "/metrics", [], b"", "h"))).body.decode()
    assert "registry_heartbeat_interval_seconds 25.0" in metrics
    assert "registry_members 60.0" in metrics


async def test_jitter_lengthens_the_interval_by_up_to_a_tenth(clock: Clock) -> None:
    app = RegistryApp(Signer(SECRET), MemoryStore(), RegistryMetrics(), clock=clock)
    intervals = [(await join(app, Peer.new(), clock.now))["heartbeat_interval"] for _ in range(30)]
    assert all(10.0 <= interval <= 11.0 for interval in intervals)
    assert len(set(intervals)) > 10


# -- the lookup limit -------------------------------------------------------------------


async def test_lookups_from_one_source_are_limited_before_the_signature(clock: Clock) -> None:
    metrics = RegistryMetrics()
    app = RegistryApp(
        Signer(SECRET),
        MemoryStore(),
        metrics,
        lookups=LookupLimiter(burst=5, rate=2),
        clock=clock,
    )
    statuses = [(await get(app, f"/members/{'a' * 52}", clock.now)).status for _ in range(8)]
    assert statuses == [404] * 5 + [429] * 3
    limited = await get(app, "/resolve/x", clock.now)
    assert refusal(limited) == (429, "too many lookups")
    assert dict(limited.headers)["Retry-After"] == "1"
    assert "Signature" not in dict(limited.headers)
    # A forged request from the limited source costs no signature check: 429 too.
    forged = Request("GET", "/members", [], b"", "192.0.2.10")
    assert (await app.handle(forged)).status == 429
    # Another source is not slowed; heartbeats and registers are not lookups.
    assert (await get(app, "/members", clock.now, host="192.0.2.11")).status == 200
    assert (await join(app, Peer.new(), clock.now))["members"] == 1
    clock.now += 1
    assert (await get(app, "/members", clock.now)).status == 200
    assert metrics.registry.get_sample_value("registry_lookups_limited_total") == 5


async def test_lookup_metrics(app: RegistryApp, clock: Clock) -> None:
    alice = Peer.new("alice")
    await join(app, alice, clock.now)
    await get(app, f"/members/{alice.id}", clock.now)
    await get(app, f"/members/{'b' * 52}", clock.now)
    await get(app, "/resolve/alice", clock.now)
    await get(app, "/members", clock.now)
    text = (await app.handle(Request("GET", "/metrics", [], b"", "h"))).body.decode()
    for line in (
        'registry_lookups_total{outcome="found"} 1.0',
        'registry_lookups_total{outcome="unknown"} 1.0',
        "registry_resolves_total 1.0",
        "registry_pages_total 1.0",
        "registry_processes 1.0",
        'registry_request_duration_seconds_count{route="/members/{id}"} 2.0',
        'registry_request_duration_seconds_count{route="/resolve/{text}"} 1.0',
    ):
        assert line in text
    assert alice.id not in text
