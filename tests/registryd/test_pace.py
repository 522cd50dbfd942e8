"""The pace the registry sets (docs/protocol.md §3.3): pure arithmetic on the member count."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registryd.pace import MAX_JITTER, Pace


def test_small_networks_heartbeat_every_third_of_peer_ttl() -> None:
    pace = Pace(jitter=lambda: 0.0)
    for members in (0, 1, 500, 2000):
        pace.members = members
        assert pace.interval(members) == 10.0
        assert pace.lease() == (30.0, 10.0)


def test_the_interval_grows_with_the_members_up_to_the_maximum() -> None:
    pace = Pace(jitter=lambda: 0.0)
    # 200 heartbeats a second for one process: 10 000 members every 50 s.
    assert pace.interval(10_000) == 50.0
    assert pace.interval(100_000) == 60.0
    pace.processes = 2
    assert pace.interval(10_000) == 25.0
    assert pace.interval(100_000) == 60.0
    assert Pace(max_heartbeat_interval=300.0).interval(100_000) == 300.0


def test_the_knobs() -> None:
    pace = Pace(peer_ttl=90.0, heartbeat_budget=1000.0, max_heartbeat_interval=45.0)
    assert pace.interval(0) == 30.0  # the floor
    assert pace.interval(40_000) == 40.0
    assert pace.interval(1_000_000) == 45.0
    # A floor above the maximum wins: peer_ttl says how long a lease lasts at least.
    assert Pace(peer_ttl=300.0, max_heartbeat_interval=60.0).interval(1_000_000) == 100.0


def test_jitter_only_lengthens_and_the_ttl_is_three_intervals() -> None:
    pace = Pace(jitter=random.Random(5).random)  # out of range on purpose: clamped
    pace.members = 10_000
    for _ in range(200):
        ttl, interval = pace.lease()
        assert 50.0 <= interval <= 50.0 * (1 + MAX_JITTER) + 0.001
        assert ttl == pytest.approx(3 * interval, abs=0.002)


def test_jitter_is_spread() -> None:
    pace = Pace()
    intervals = {pace.lease()[1] for _ in range(100)}
    assert len(intervals) > 50 and min(intervals) >= 10.0 and max(intervals) <= 11.0


@given(st.integers(min_value=0, max_value=10**7), st.integers(min_value=1, max_value=64))
def test_the_interval_is_monotonic_and_bounded(members: int, processes: int) -> None:
    pace = Pace(processes=processes)
    interval = pace.interval(members)
    assert pace.floor <= interval <= max(pace.floor, pace.max_heartbeat_interval)
    assert pace.interval(members + 1000) >= interval
    assert Pace(processes=processes + 1).interval(members) <= interval
