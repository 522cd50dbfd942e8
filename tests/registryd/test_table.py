"""The pure membership table, driven by plain numbers for time (as h11 tests its state machine)."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from registryd.table import RegistryTable

TTL = 30.0


def register(
    table: RegistryTable, member_id: str, now: float, ttl: float = TTL, name: str = ""
) -> bool:
    _, new = table.register(
        member_id, name or f"name-{member_id}", "PEM", ("127.0.0.1:7070",), now, ttl=ttl
    )
    return new


def ids(table: RegistryTable, now: float) -> list[str]:
    return sorted(entry.id for entry in table.active(now))


def test_register_then_look_up_shows_the_member_with_its_data() -> None:
    table = RegistryTable()
    entry, new = table.register("a", "alice", "PEM", ("10.0.0.1:7070",), now=100.0, ttl=TTL)
    assert new
    assert table.get("a", 101.0) == entry
    assert list(table.active(101.0)) == [entry]
    assert (entry.last_seen, entry.expires_at) == (100.0, 130.0)
    assert entry.addresses == ("10.0.0.1:7070",)
    assert table.get("b", 101.0) is None


def test_each_lease_has_its_own_ttl() -> None:
    table = RegistryTable()
    register(table, "short", 0.0, ttl=10.0)
    register(table, "long", 0.0, ttl=90.0)
    assert ids(table, 9.9) == ["long", "short"]
    assert ids(table, 10.0) == ["long"]
    assert [e.id for e in table.expire(10.0)] == ["short"]
    assert table.get("long", 89.0) is not None
    assert [e.id for e in table.expire(90.0)] == ["long"]
    assert len(table) == 0


def test_a_lapsed_member_is_never_answered_even_before_the_sweep() -> None:
    table = RegistryTable()
    register(table, "a", 0.0)
    assert table.get("a", 30.0) is None
    assert table.page("", 30.0, limit=10) == ([], None)
    assert table.resolve("name-a", "a", 30.0) == ([], False)
    assert table.renew("a", 31.0, ttl=TTL) is None  # the peer must register again


def test_heartbeat_extends_the_lease_from_its_own_time_with_its_own_ttl() -> None:
    table = RegistryTable()
    register(table, "a", 0.0)
    renewed = table.renew("a", 20.0, ttl=60.0)
    assert renewed is not None and (renewed.last_seen, renewed.expires_at) == (20.0, 80.0)
    assert table.expire(79.9) == []
    assert [e.id for e in table.expire(80.0)] == ["a"]


def test_register_again_after_expiry_counts_as_new() -> None:
    table = RegistryTable()
    assert register(table, "a", 0.0)
    assert not register(table, "a", 10.0)
    assert register(table, "a", 100.0)  # lapsed, not yet swept: new for the others
    assert ids(table, 101.0) == ["a"]


def test_leave_removes_at_once_from_every_index() -> None:
    table = RegistryTable()
    register(table, "a", 0.0, name="alice")
    register(table, "b", 0.0)
    assert table.leave("a") is not None
    assert ids(table, 1.0) == ["b"]
    assert table.resolve("alice", None, 1.0) == ([], False)
    assert table.leave("a") is None
    assert table.expire(100.0)[0].id == "b"  # the leaver's lease bucket is empty


def test_expire_takes_only_the_leases_that_ran_out() -> None:
    table = RegistryTable()
    register(table, "a", 0.0)
    register(table, "b", 10.0)
    register(table, "c", 20.0)
    table.renew("a", 25.0, ttl=TTL)
    assert [e.id for e in table.expire(41.0)] == ["b"]
    assert ids(table, 41.0) == ["a", "c"]
    # Within one second: the bucket of the current second is looked into.
    register(table, "d", 42.2, ttl=1.0)
    register(table, "e", 42.6, ttl=1.0)
    assert [e.id for e in table.expire(43.3)] == ["d"]
    assert ids(table, 43.3) == ["a", "c", "e"]


def test_pages_are_sorted_by_id_and_say_where_to_go_on() -> None:
    table = RegistryTable()
    for member_id in ["d", "a", "e", "c", "b"]:
        register(table, member_id, 0.0)
    first, following = table.page("", 1.0, limit=2)
    assert ([e.id for e in first], following) == (["a", "b"], "b")
    second, following = table.page("b", 1.0, limit=2)
    assert ([e.id for e in second], following) == (["c", "d"], "d")
    last, following = table.page("d", 1.0, limit=2)
    assert ([e.id for e in last], following) == (["e"], None)
    exact, following = table.page("c", 1.0, limit=2)
    assert ([e.id for e in exact], following) == (["d", "e"], None)
    # "after" need not be a member: any point of the id space.
    assert [e.id for e in table.page("bz", 1.0, limit=10)[0]] == ["c", "d", "e"]


def test_lapsed_members_are_skipped_in_pages() -> None:
    table = RegistryTable()
    register(table, "a", 0.0)
    register(table, "b", 0.0, ttl=1.0)
    register(table, "c", 0.0)
    assert [e.id for e in table.page("", 2.0, limit=2)[0]] == ["a", "c"]
    assert table.page("", 2.0, limit=2)[1] is None


def test_resolve_matches_names_and_id_prefixes_sorted_by_id() -> None:
    table = RegistryTable()
    register(table, "bbbx", 0.0, name="carol")
    register(table, "bbby", 0.0, name="bob")
    register(table, "zzzz", 0.0, name="bob")
    register(table, "bobq", 0.0, name="dave")
    found, more = table.resolve("bob", "bob", 1.0)
    assert ([e.id for e in found], more) == (["bbby", "bobq", "zzzz"], False)
    found, more = table.resolve("bbb", "bbb", 1.0)
    assert ([e.name for e in found], more) == (["carol", "bob"], False)
    # A full id is a prefix of itself only.
    assert [e.id for e in table.resolve("zzzz", "zzzz", 1.0)[0]] == ["zzzz"]
    # Names are exact: another case is another name.
    assert table.resolve("Bob", None, 1.0) == ([], False)


def test_resolve_answers_the_first_ten_and_says_there_are_more() -> None:
    table = RegistryTable()
    for number in range(25):
        register(table, f"m{number:02d}", 0.0, name="twin")
    found, more = table.resolve("twin", None, 1.0)
    assert ([e.id for e in found], more) == ([f"m{n:02d}" for n in range(10)], True)
    found, more = table.resolve("x", "m2", 1.0)
    assert ([e.id for e in found], more) == ([f"m{n}" for n in range(20, 25)], False)


def test_a_new_name_replaces_the_old_one() -> None:
    table = RegistryTable()
    register(table, "a", 0.0, name="old")
    register(table, "a", 1.0, name="new")
    assert table.resolve("old", None, 2.0) == ([], False)
    assert [e.id for e in table.resolve("new", None, 2.0)[0]] == ["a"]


IDS = st.sampled_from(["aa", "ab", "b", "ba", "c"])
NAMES = st.sampled_from(["x", "y"])
operations = st.lists(
    st.tuples(
        st.sampled_from(["register", "renew", "leave", "expire", "page", "resolve"]),
        IDS,
        NAMES,
        st.floats(min_value=0, max_value=20),
        st.sampled_from([5.0, 15.0, 40.0]),
    ),
    max_size=60,
)


@given(operations)
def test_table_agrees_with_a_naive_model(
    ops: list[tuple[str, str, str, float, float]],
) -> None:
    """Whatever the sequence, the table answers what 'expires_at > now' over a dict says."""
    table = RegistryTable()
    #: id -> (name, expires_at)
    model: dict[str, tuple[str, float]] = {}
    now = 0.0
    for op, member_id, name, step, ttl in ops:
        now += step
        alive = member_id in model and model[member_id][1] > now
        if op == "register":
            assert register(table, member_id, now, ttl, name) == (not alive)
            model[member_id] = (name, now + ttl)
        elif op == "renew":
            assert (table.renew(member_id, now, ttl=ttl) is not None) == alive
            if alive:
                model[member_id] = (model[member_id][0], now + ttl)
        elif op == "leave":
            table.leave(member_id)
            model.pop(member_id, None)
        elif op == "expire":
            gone = {e.id for e in table.expire(now)}
            expected = {m for m, (_, ends) in model.items() if ends <= now}
            assert gone == expected
            for m in expected:
                del model[m]
        live = sorted(m for m, (_, ends) in model.items() if ends > now)
        assert ids(table, now) == live
        if op == "page":
            after = member_id[:1]
            found, following = table.page(after, now, limit=2)
            wanted = [m for m in live if m > after]
            assert [e.id for e in found] == wanted[:2]
            assert following == (wanted[1] if len(wanted) > 2 else None)
        if op == "resolve":
            prefix = member_id[:1]
            found, more = table.resolve(name, prefix, now, limit=2)
            wanted = [m for m in live if model[m][0] == name or m.startswith(prefix)]
            assert ([e.id for e in found], more) == (wanted[:2], len(wanted) > 2)


def test_ids_use_only_characters_before_the_prefix_bound() -> None:
    # The prefix range ends at "{": every character of an id must sort before it.
    assert max(string.ascii_lowercase + "234567") < "{"
