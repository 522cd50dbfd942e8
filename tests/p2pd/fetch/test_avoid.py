"""p2pd/fetch/avoid.py: members avoided for a content for an hour after a bad piece."""

from __future__ import annotations

import pytest

from p2pd.fetch.avoid import AVOID_SECONDS, AvoidList

CONTENT = "ab" * 32
OTHER = "cd" * 32


def test_a_liar_is_avoided_for_that_content_for_an_hour() -> None:
    avoid = AvoidList()
    assert AVOID_SECONDS == 3600
    assert avoid.avoid(CONTENT, "mallory", 100.0) == 3700.0
    assert avoid.avoided(CONTENT, "mallory", 100.0)
    assert avoid.avoided(CONTENT, "mallory", 3699.9)
    assert avoid.until(CONTENT, "mallory", 3699.9) == 3700.0
    assert not avoid.avoided(CONTENT, "alice", 200.0)
    assert not avoid.avoided(OTHER, "mallory", 200.0)  # a damaged file says nothing of others
    assert not avoid.avoided(CONTENT, "mallory", 3700.0)
    assert len(avoid) == 0  # expired entries are forgotten


def test_lying_again_starts_the_hour_again() -> None:
    avoid = AvoidList()
    avoid.avoid(CONTENT, "mallory", 0.0)
    avoid.avoid(OTHER, "eve", 1000.0)
    avoid.avoid(CONTENT, "mallory", 2000.0)
    assert avoid.avoided(CONTENT, "mallory", 5000.0)
    assert not avoid.avoided(OTHER, "eve", 5000.0)


def test_memory_is_bounded_and_the_oldest_are_forgotten_first() -> None:
    avoid = AvoidList(capacity=100)
    for n in range(250):
        avoid.avoid(f"{n:064x}", f"member{n}", float(n))
        assert len(avoid) <= 100
    assert not avoid.avoided(f"{149:064x}", "member149", 300.0)
    assert all(avoid.avoided(f"{n:064x}", f"member{n}", 300.0) for n in range(150, 250))
    with pytest.raises(ValueError, match="at least one entry"):
        AvoidList(capacity=0)
