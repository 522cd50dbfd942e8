"""PEER lookup for the control methods: a name never silently stands for another's id."""

from __future__ import annotations

import pytest

from p2pcommon.identity import short_id
from p2pcommon.models import Member
from p2pd.membership.members import Members, PeerLookupError

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


def test_a_peer_that_names_no_member_gets_what_it_may_have_meant() -> None:
    members = members_with(member(BOB, "bob"), member(CAROL, "Carol"), member("d" * 52, "Bob"))

    def why(peer: str, own_name: str | None = "me") -> str:
        with pytest.raises(PeerLookupError) as caught:
            members.resolve(peer, own_name=own_name)
        assert caught.value.candidates == []
        return str(caught.value)

    # Names compare exactly; the same letters in another case are suggested first.
    assert why("BOB") == "no member named or prefixed 'BOB': did you mean Bob or bob?"
    assert why("carol") == "no member named or prefixed 'carol': did you mean Carol?"
    assert why("bbo").endswith("did you mean Bob or bob?")  # a typo
    assert why("dave") == "no member named or prefixed 'dave'; `p2pctl peers` lists who is online"
    # This daemon itself, by its id (any prefix, any case) or its name (any case).
    itself = "is this daemon itself: `p2pctl shared` lists what it shares"
    for own in ("ooooooo", "OOO", "o" * 52, "me", "ME"):
        assert why(own) == f"{own!r} {itself}"
    assert why("me", own_name=None).startswith("no member")
