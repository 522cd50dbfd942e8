"""The connection table: who makes room when a bound is reached, and what an address is."""

from __future__ import annotations

import trio

from p2pcommon.http.connections import STALLED_AFTER, Connection, ConnectionTable, address_key


def test_an_address_is_what_one_party_holds() -> None:
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("unix") == "unix"


def conn(host: str = "192.0.2.1") -> Connection:
    return Connection(trio.CancelScope(), host)


def idle(since: float, host: str = "192.0.2.1") -> Connection:
    c = conn(host)
    c.became_idle(since)
    return c


def partial(since: float, host: str = "192.0.2.1") -> Connection:
    c = conn(host)
    c.request_started(since)
    return c


def busy(host: str = "192.0.2.1") -> Connection:
    c = conn(host)
    c.request_started(0.0)
    c.request_received()
    return c


def evicted(
    existing: list[Connection], now: float, newcomer: Connection | None = None
) -> Connection:
    table = ConnectionTable(len(existing), len(existing))
    for c in existing:
        assert table.admit(c, 0.0)
    assert table.admit(newcomer or conn("198.51.100.1"), now)
    (gone,) = [c for c in existing if c not in table.all]
    assert gone.scope.cancel_called
    return gone


def test_the_longest_idle_or_stalled_connection_makes_room() -> None:
    now = 100.0
    old_idle, young_idle = idle(10.0), idle(90.0)
    stalled = partial(5.0)  # began before old_idle went idle
    young = partial(now - STALLED_AFTER / 4)
    ancient_but_young = partial(1.0)  # older still, judged at a time it was young
    assert evicted([young_idle, old_idle, young, busy()], now) is old_idle
    assert evicted([young_idle, old_idle, stalled, young, busy()], now) is stalled
    assert evicted([young_idle, old_idle, ancient_but_young], 1.0 + STALLED_AFTER / 2) is old_idle


def test_a_table_full_of_partial_requests_keeps_room_for_newcomers() -> None:
    now = 100.0
    oldest, newer = partial(now - 1.0), partial(now - 0.5)
    assert evicted([newer, busy(), oldest], now) is oldest


def test_only_busy_connections_refuse_a_newcomer() -> None:
    table = ConnectionTable(2, 2)
    assert table.admit(busy(), 0.0) and table.admit(busy(), 0.0)
    assert not table.admit(conn(), 1.0)


def test_one_ipv6_host_gets_one_share_of_the_table() -> None:
    table = ConnectionTable(max_connections=10, max_per_address=2)
    first, second = idle(1.0, "2001:db8::1"), idle(2.0, "2001:db8::2")
    assert table.admit(first, 0.0) and table.admit(second, 0.0)
    assert table.admit(idle(3.0, "2001:db8::ffff"), 3.0)
    assert first not in table.all and len(table.all) == 2
    other = idle(4.0, "2001:db8:0:1::1")  # another /64: its own share
    assert table.admit(other, 4.0)
    assert len(table.all) == 3
    for c in list(table.all):
        table.discard(c)
    assert not table.all
