"""The pure membership table, driven by a fake clock (plain numbers)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from registryd.table import RegistryTable

TTL = 30.0


def register(table: RegistryTable, member_id: str, now: float) -> bool:
    _, new = table.register(member_id, f"name-{member_id}", "PEM", ("127.0.0.1:7070",), now)
    return new


def ids(table: RegistryTable, now: float) -> list[str]:
    return [entry.id for entry in table.active(now)]


def test_register_then_list_shows_the_member_with_its_data() -> None:
    table = RegistryTable(TTL)
    entry, new = table.register("a", "alice", "PEM", ("10.0.0.1:7070",), now=100.0)
    assert new
    assert list(table.active(101.0)) == [entry]
    assert entry.last_seen == 100.0
    assert entry.addresses == ("10.0.0.1:7070",)


def test_heartbeat_interval_is_a_third_of_the_ttl() -> None:
    assert RegistryTable(30).heartbeat_interval == 10


def test_lease_runs_out_after_ttl_without_heartbeat() -> None:
    table = RegistryTable(TTL)
    register(table, "a", 0.0)
    assert ids(table, 29.9) == ["a"]
    assert ids(table, 30.0) == []
    assert [e.id for e in table.expire(30.0)] == ["a"]
    assert len(table) == 0


def test_heartbeat_extends_the_lease_from_its_own_time() -> None:
    table = RegistryTable(TTL)
    register(table, "a", 0.0)
    renewed = table.renew("a", 20.0)
    assert renewed is not None and renewed.last_seen == 20.0
    assert ids(table, 49.0) == ["a"]
    assert table.expire(49.0) == []
    assert [e.id for e in table.expire(50.0)] == ["a"]


def test_heartbeat_of_unknown_or_expired_member_is_refused() -> None:
    table = RegistryTable(TTL)
    assert table.renew("ghost", 0.0) is None
    register(table, "a", 0.0)
    # Expired but not yet swept: still refused, the peer must register again.
    assert table.renew("a", 31.0) is None


def test_register_again_after_expiry_counts_as_new() -> None:
    table = RegistryTable(TTL)
    assert register(table, "a", 0.0)
    assert not register(table, "a", 10.0)
    assert register(table, "a", 100.0)


def test_leave_removes_at_once() -> None:
    table = RegistryTable(TTL)
    register(table, "a", 0.0)
    register(table, "b", 0.0)
    assert table.leave("a") is not None
    assert ids(table, 1.0) == ["b"]
    assert table.leave("a") is None


def test_expire_returns_only_the_members_whose_lease_ran_out() -> None:
    table = RegistryTable(TTL)
    register(table, "a", 0.0)
    register(table, "b", 10.0)
    register(table, "c", 20.0)
    table.renew("a", 25.0)
    assert [e.id for e in table.expire(41.0)] == ["b"]
    assert sorted(ids(table, 41.0)) == ["a", "c"]


operations = st.lists(
    st.tuples(
        st.sampled_from(["register", "renew", "leave", "expire"]),
        st.sampled_from(["a", "b", "c", "d"]),
        st.floats(min_value=0, max_value=20),
    ),
    max_size=60,
)


@given(operations)
def test_table_agrees_with_a_naive_model(ops: list[tuple[str, str, float]]) -> None:
    """Whatever the sequence, the table's live set equals 'last renewal + ttl > now'."""
    table = RegistryTable(TTL)
    last_seen: dict[str, float] = {}
    now = 0.0
    for op, member_id, step in ops:
        now += step
        alive = member_id in last_seen and last_seen[member_id] + TTL > now
        if op == "register":
            assert register(table, member_id, now) == (not alive)
            last_seen[member_id] = now
        elif op == "renew":
            assert (table.renew(member_id, now) is not None) == alive
            if alive:
                last_seen[member_id] = now
        elif op == "leave":
            table.leave(member_id)
            last_seen.pop(member_id, None)
        else:
            gone = {e.id for e in table.expire(now)}
            expected = {m for m, t in last_seen.items() if t + TTL <= now}
            assert gone == expected
            for m in expected:
                del last_seen[m]
        live = {m for m, t in last_seen.items() if t + TTL > now}
        assert set(ids(table, now)) == live
