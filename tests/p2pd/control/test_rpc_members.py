"""PEER lookup for the control methods: a name never silently stands for another's id.

The directory asks a real registry (tests/p2pd/live_registry.py) to resolve each text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from p2pcommon.identity import short_id
from p2pcommon.models import Member
from p2pd.membership.directory import Directory, PeerLookupError
from tests.p2pd.live_registry import live_registry
from tests.support import make_cert_pem

OWN = "o" * 52
BOB = "b7c4e2a" + "b" * 45
CAROL = "c" * 52


def member(member_id: str, name: str) -> Member:
    return Member(
        id=member_id, name=name, addresses=["127.0.0.1:1"], cert=make_cert_pem(), last_seen=0
    )


@asynccontextmanager
async def members_with(*listed: Member) -> AsyncIterator[Directory]:
    async with live_registry([member(OWN, "me"), *listed]) as registry:
        yield registry.directory(OWN)


async def test_a_name_that_is_another_members_short_id_is_ambiguous() -> None:
    async with members_with(member(BOB, "bob"), member(CAROL, short_id(BOB))) as members:
        with pytest.raises(PeerLookupError) as caught:
            await members.resolve(short_id(BOB))
        assert [m.id for m in caught.value.candidates] == [BOB, CAROL]
        assert "matches 2 members" in str(caught.value)
        # Either one is still reachable: more of the id, or the full id.
        assert (await members.resolve(BOB[:8])).id == BOB
        assert (await members.resolve(CAROL[:3])).id == CAROL
        assert (await members.resolve(BOB)).id == BOB


async def test_a_name_that_is_a_prefix_of_another_members_id_is_ambiguous() -> None:
    async with members_with(member(BOB, "bob"), member(CAROL, "b7c")) as members:
        with pytest.raises(PeerLookupError) as caught:
            await members.resolve("b7c")
        assert [m.id for m in caught.value.candidates] == [BOB, CAROL]
        # Names compare exactly, id prefixes ignore case: "B7C" is no one's name.
        assert (await members.resolve("B7C")).id == BOB
        assert (await members.resolve("bob")).id == BOB
        with pytest.raises(PeerLookupError, match="no member") as none:
            await members.resolve("dave")
        assert none.value.candidates == []


async def test_an_exact_full_id_wins_even_over_a_name_equal_to_it() -> None:
    # The full id is what a member authenticates as; a name cannot take it over.
    listed = member(BOB, "bob"), member(CAROL, BOB), member("x" * 52, "b")
    async with members_with(*listed) as members:
        assert (await members.resolve(BOB)).id == BOB
        # "b" is one member's name and a prefix of another's id: two candidates.
        with pytest.raises(PeerLookupError) as caught:
            await members.resolve("b")
        assert len(caught.value.candidates) == 2


async def test_ourselves_are_never_a_candidate_and_names_may_repeat() -> None:
    listed = member("abcde" + "a" * 47, "alice"), member("abcdf" + "b" * 47, "bob")
    async with members_with(*listed, member("zzz" + "c" * 49, "bob")) as members:
        assert (await members.resolve("alice")).name == "alice"
        assert (await members.resolve("abcde")).name == "alice"
        assert (await members.resolve("zzz")).id.startswith("zzz")
        assert (await members.resolve("abcdf" + "b" * 47)).name == "bob"
        for ambiguous in ("abcd", "bob"):
            with pytest.raises(PeerLookupError) as caught:
                await members.resolve(ambiguous)
            assert len(caught.value.candidates) == 2
        assert await members.get(OWN) is None and not await members.is_member(OWN)


async def test_a_peer_that_names_no_member_gets_what_it_may_have_meant() -> None:
    listed = member(BOB, "bob"), member(CAROL, "Carol"), member("d" * 52, "Bob")
    async with members_with(*listed) as members:

        async def why(peer: str, own_name: str | None = "me") -> str:
            with pytest.raises(PeerLookupError) as caught:
                await members.resolve(peer, own_name=own_name)
            assert caught.value.candidates == []
            return str(caught.value)

        # The registry matches names exactly; the same name in lower case is asked too.
        assert await why("BOB") == "no member named or prefixed 'BOB': did you mean bob?"
        # Names seen in a listing (`p2pctl peers`) are suggested too: another case first.
        [name async for page in members.pages() for name in (m.name for m in page)]
        assert await why("BOB") == "no member named or prefixed 'BOB': did you mean Bob or bob?"
        assert await why("carol") == "no member named or prefixed 'carol': did you mean Carol?"
        assert (await why("bbo")).endswith("did you mean Bob or bob?")  # a typo
        assert await why("dave") == (
            "no member named or prefixed 'dave'; `p2pctl peers` lists who is online"
        )
        # This daemon itself, by its id (any prefix, any case) or its name (any case).
        itself = "is this daemon itself: `p2pctl shared` lists what it shares"
        for own in ("ooooooo", "OOO", "o" * 52, "me", "ME"):
            assert await why(own) == f"{own!r} {itself}"
        assert (await why("me", own_name=None)).startswith("no member")


async def test_a_text_that_is_no_peer_is_refused_before_the_registry_is_asked() -> None:
    async with members_with(member(BOB, "bob")) as members:
        for text in ("x" * 65, "bo\nb", "\x1b[31m"):
            with pytest.raises(PeerLookupError, match="is no PEER"):
                await members.resolve(text)
        assert members.requests == 0
