"""The member directory: looked up at a real registry, kept briefly, bounded.

The registry is the real RegistryApp (memory store) on loopback; the directory's
clock is a fake one where a test needs time to pass.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio

from p2pcommon.http.events import Request, Response
from p2pcommon.models import Member
from p2pd.membership.directory import Directory, LookupUnavailable, member_matches
from tests.p2pd.live_registry import Handler, LiveRegistry, live_registry
from tests.support import make_cert_pem

OWN = "o" * 52
CERT = make_cert_pem()


def member(number: int, name: str | None = None) -> Member:
    """Member ``number``: ids sort as the numbers do."""
    digits = "".join("abcdefghij"[int(d)] for d in f"{number:06d}")
    return Member(
        id=digits + "q" * 46,
        name=name or f"peer-{number}",
        addresses=["127.0.0.1:1"],
        cert=CERT,
        last_seen=0,
    )


@dataclass
class Front:
    """In front of the registry: counts lookups by id, and how many were out at once."""

    held: trio.Event | None = None
    lookups: int = 0
    out: int = 0
    most_out: int = 0
    seen: list[str] = field(default_factory=list)
    arrived: trio.Event = field(default_factory=trio.Event)

    async def until_out(self, count: int) -> None:
        """Until ``count`` requests are held here at once (they come over sockets)."""
        while self.out < count:
            await self.arrived.wait()

    def __call__(self, handle: Handler) -> Handler:
        async def front(request: Request) -> Response:
            self.seen.append(request.path)
            if request.path.startswith("/members/"):
                self.lookups += 1
            self.out += 1
            self.most_out = max(self.most_out, self.out)
            self.arrived.set()
            self.arrived = trio.Event()
            try:
                if self.held is not None:
                    await self.held.wait()
                return await handle(request)
            finally:
                self.out -= 1

        return front


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def directory_of(
    *members: Member, front: Front | None = None, **options: object
) -> AsyncIterator[tuple[Directory, LiveRegistry, Clock]]:
    clock = Clock()
    async with live_registry([member_of_own(), *members], front=front) as registry:
        directory = Directory(
            OWN,
            registry.client,
            interval=5.0,
            clock=clock,
            **options,  # type: ignore[arg-type]
        )
        yield directory, registry, clock


def member_of_own() -> Member:
    return Member(id=OWN, name="me", addresses=[], cert=CERT, last_seen=0)


async def test_a_member_that_left_is_refused_within_one_interval() -> None:
    bob = member(1, "bob")
    async with directory_of(bob) as (directory, registry, clock):
        directory.advise(3.0, 2)  # the registry's pace wins over our own 5 s
        assert await directory.is_member(bob.id)
        await registry.remove(bob.id)
        clock.now += 2.9
        assert await directory.is_member(bob.id)  # kept: no request per connection
        clock.now += 0.2
        assert not await directory.is_member(bob.id)
        assert directory.requests == 2


async def test_a_newcomer_is_seen_within_the_short_negative_answer() -> None:
    bob = member(1, "bob")
    async with directory_of() as (directory, registry, clock):
        assert await directory.get(bob.id) is None
        await registry.add(bob)
        clock.now += 1.9
        assert await directory.get(bob.id) is None  # "unknown" is kept 2 s at most
        clock.now += 0.2
        assert await directory.get(bob.id) == bob.model_copy(
            update={"last_seen": (await directory.get(bob.id) or bob).last_seen}
        )


async def test_lookups_of_one_id_at_once_are_one_request() -> None:
    bob = member(1, "bob")
    front = Front(held=trio.Event())
    async with directory_of(bob, front=front) as (directory, _, _):
        answers: list[Member | None] = []

        async def ask() -> None:
            answers.append(await directory.get(bob.id))

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked()
            front.held.set()  # type: ignore[union-attr]
        assert front.lookups == 1
        assert len(answers) == 50 and all(a is not None and a.id == bob.id for a in answers)


async def test_lookups_in_flight_and_answers_kept_are_bounded() -> None:
    front = Front(held=trio.Event())
    strangers = [member(n).id for n in range(100, 140)]
    async with directory_of(front=front, max_in_flight=4, max_entries=8) as (directory, _, _):
        async with trio.open_nursery() as nursery:
            for stranger in strangers:
                nursery.start_soon(directory.get, stranger)
            with trio.fail_after(30):
                await front.until_out(4)
            await trio.testing.wait_all_tasks_blocked()
            assert front.out == 4  # the others wait their turn, not the registry
            front.held.set()  # type: ignore[union-attr]
        assert front.most_out == 4 and front.lookups == 40
        assert directory.kept == 8  # the most recent answers only


async def test_what_is_no_id_and_ourselves_are_no_member_without_asking() -> None:
    async with directory_of() as (directory, _, _):
        for text in ("", "bob", "A" * 52, "a" * 51, "a" * 53, "1" * 52, OWN):
            assert await directory.get(text) is None
        assert not await directory.is_member(None)
        assert directory.requests == 0


async def test_without_a_registry_a_kept_answer_is_used_and_else_it_says_so() -> None:
    bob, carol = member(1, "bob"), member(2, "carol")
    async with directory_of(bob, carol) as (directory, _, clock):
        assert await directory.is_member(bob.id)
    # The registry is gone (its port closed): every lookup fails now.
    clock.now += 60
    # An outage must not cut off a member admitted a moment ago.
    assert await directory.is_member(bob.id)
    with pytest.raises(LookupUnavailable, match="cannot look member"):
        await directory.get(carol.id)


async def test_pages_list_everyone_else_filtered_and_in_id_order() -> None:
    listed = [member(n) for n in range(25)] + [member(99, "Bobby")]
    async with directory_of(*listed) as (directory, _, _):
        pages = [page async for page in directory.pages(limit=10)]
        assert [len(page) for page in pages] == [10, 10, 6]  # ourselves left out
        ids = [m.id for page in pages for m in page]
        assert ids == sorted(ids) and OWN not in ids
        assert all(m.cert == "" for page in pages for m in page)  # certs=0: lighter
        found = [m.name async for page in directory.pages("peer-1?") for m in page]
        assert found == [f"peer-{n}" for n in range(10, 20)]
        found = [m.name async for page in directory.pages("BOB") for m in page]
        assert found == ["Bobby"]  # a substring, any case
        assert [m async for page in directory.pages("nobody") for m in page] == []


def spread(number: int) -> Member:
    """Member ``number`` with an id anywhere in the id space, as real ids are."""
    digest = base64.b32encode(hashlib.sha256(b"%d" % number).digest()).decode().lower()
    return member(number).model_copy(update={"id": digest[:52]})


async def test_a_sample_comes_from_a_random_point_and_wraps_around() -> None:
    listed = [spread(n) for n in range(60)]
    async with directory_of(*listed) as (directory, _, _):
        starts = set()
        for _ in range(5):
            sample = await directory.sample(32)
            assert len({m.id for m in sample}) == 32 and OWN not in {m.id for m in sample}
            assert all(m.cert == CERT for m in sample)  # connectable
            starts.add(sample[0].id)
        assert len(starts) > 1
    async with directory_of(*listed[:5]) as (directory, _, _):
        assert {m.id for m in await directory.sample(32)} == {m.id for m in listed[:5]}


def test_patterns_are_globs_with_wildcards_else_substrings() -> None:
    assert member_matches(None, "abc", "Bob")
    assert member_matches("bo", "abc", "Bob") and member_matches("AB", "abc", "x")
    assert member_matches("b*", "zzz", "Bob") and not member_matches("o*", "zzz", "Bob")
    assert member_matches("[ab]bc", "abc", "x") and not member_matches("b?", "zzz", "Bob")
