"""The rules of the upload slots (p2pd/peer/uploads.py): each member's share, and the pace floor.

Pure rules with trio's MockClock for the waits; the same rules against real
TLS clients are in tests/hostile/test_upload_slots.py.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from p2pd.peer.slots import UploadSlots
from p2pd.peer.uploads import BUSY, BUSY_FOR_YOU, UploadPace, member_share


@pytest.mark.parametrize(("slots", "share"), [(1, 1), (3, 1), (4, 1), (8, 2), (9, 2), (64, 16)])
def test_a_member_s_share_is_a_quarter_of_the_slots_and_at_least_one(
    slots: int, share: int
) -> None:
    assert member_share(slots) == share


async def test_alone_a_member_uses_all_but_a_share_and_others_get_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slots = UploadSlots(8)  # a share of 2
    for _ in range(6):
        assert await slots.acquire("mallory", 2.0) is None
    started = trio.current_time()
    assert await slots.acquire("mallory", 2.0) == BUSY_FOR_YOU  # 2 stay for the others
    assert trio.current_time() - started == pytest.approx(2.0)  # after waiting its turn
    assert await slots.acquire("bob", 2.0) is None
    assert await slots.acquire("carol", 2.0) is None
    assert await slots.acquire("dave", 2.0) == BUSY
    assert slots.held_by("mallory") == 6 and slots.active == 8


async def test_a_freed_slot_goes_to_a_waiter_that_may_take_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slots = UploadSlots(4)  # a share of 1
    for member in ("mallory", "mallory", "mallory", "bob"):
        assert await slots.acquire(member, 2.0) is None
    got: list[tuple[str, str | None]] = []

    async def ask(member: str) -> None:
        got.append((member, await slots.acquire(member, 5.0)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, "mallory")
        nursery.start_soon(ask, "carol")
        await trio.sleep(1.0)
        assert slots.waiting == 2 and slots.contended(trio.current_time(), 30.0)
        slots.release("mallory")  # carol may take it; mallory (at 2, over her share) not
    assert got == [("carol", None), ("mallory", BUSY)]  # carol took the last one
    assert slots.contended(trio.current_time(), 30.0)  # refused a moment ago
    await trio.sleep(31.0)
    assert not slots.contended(trio.current_time(), 30.0)


def test_the_pace_is_that_of_the_last_window_of_the_client_s_time() -> None:
    pace = UploadPace(start=100.0, window=30.0)
    for second in range(1, 30):
        pace.add(1_000_000 if second < 10 else 1_000, 100.0 + second)
    assert pace.rate(129.0) is None  # not a whole window yet
    assert pace.rate(135.0) == pytest.approx((pace.sent - 5_000_000 - 1_000) / 30, rel=0.1)
    for second in range(36, 80):
        pace.add(1_000, 100.0 + second)
    assert pace.rate(180.0) == pytest.approx(1_000, rel=0.1)  # the fast start is forgotten


def test_waits_of_the_server_are_not_the_client_s_time() -> None:
    pace = UploadPace(start=0.0, window=10.0)
    pace.our_wait(0.0)
    assert pace.rate(100.0) is None  # 100 s waiting for the rate limit: no time of the client's
    pace.client_again(100.0)
    pace.add(1 << 20, 100.5)
    assert pace.client_time(105.0) == pytest.approx(5.0)
    assert pace.rate(105.0) is None
    pace.our_wait(106.0)
    pace.client_again(200.0)
    assert pace.rate(205.0) == pytest.approx((1 << 20) / 11, rel=0.15)
