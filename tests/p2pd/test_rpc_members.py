"""PEER lookup for the control methods: a name never silently stands for another's id."""

from __future__ import annotations

import pytest

from p2pcommon.identity import short_id
from p2pcommon.models import Member
from p2pd.members import Members, PeerLookupError

OWN = "o" * 52
BOB = "b7c4e2a" + "b" * 45
CAROL = "c" * 52


def member(member_id: str, name: str) -> Member:
    return Member(id=member_id, name=name, addresses=["127.0.0.1:1"], cert="PEM", last_seen=0)


def members_with(*listed: Member) -> Members:
    members = Members.empty(OWN)
    members.update(listed)
    return members


def test_a_name_that_is_another_members_short_id_is_ambiguous() -> None:
    members = members_with(member(BOB, "bob"), member(CAROL, short_id(BOB)))
    with pytest.raises(PeerLookupError) as caught:
        members.resolve(short_id(BOB))
    assert [m.id for m in caught.value.candidates] == [BOB, CAROL]
    assert "matches 2 members" in str(caught.value)
    # Either one is still reachable: more of the id, or the full id.
    assert members.resolve(BOB[:8]).id == BOB
    assert members.resolve(CAROL[:3]).id == CAROL
    assert members.resolve(BOB).id == BOB


def test_a_name_that_is_a_prefix_of_another_members_id_is_ambiguous() -> None:
    members = members_with(member(BOB, "bob"), member(CAROL, "b7c"))
    with pytest.raises(PeerLookupError) as caught:
        members.resolve("b7c")
    assert [m.id for m in caught.value.candidates] == [BOB, CAROL]
    # Names compare exactly, id prefixes ignore case: "B7C" is no one's name.
    assert members.resolve("B7C").id == BOB
    assert members.resolve("bob").id == BOB
    with pytest.raises(PeerLookupError, match="no member") as none:
        members.resolve("dave")
    assert none.value.candidates == []


def test_an_exact_full_id_wins_even_over_a_name_equal_to_it() -> None:
    # The full id is what a member authenticates as; a name cannot take it over.
    members = members_with(member(BOB, "bob"), member(CAROL, BOB), member("x" * 52, "b"))
    assert members.resolve(BOB).id == BOB
    # "b" is one member's name and a prefix of another's id: two candidates.
    with pytest.raises(PeerLookupError) as caught:
        members.resolve("b")
    assert len(caught.value.candidates) == 2
