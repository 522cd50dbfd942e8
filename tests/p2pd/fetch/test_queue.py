"""The transfer queue: records until their turn, bounded, cancellable before they start."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
import trio

from p2pcommon.models import Member, SharedFile
from p2pd.fetch import downloads as downloads_module
from p2pd.fetch.downloads import Downloads, QueueFull
from p2pd.fetch.history import History
from p2pd.peer.client import PeerPool
from tests.p2pd.fetch.test_join import BOB
from tests.p2pd.live_registry import LiveRegistry, live_registry


class Mute:
    """A member that takes every request and never answers: transfers stay running."""

    def __init__(self) -> None:
        self.requests = 0
        self._asked = trio.Event()

    async def request(
        self, member: Member, target: str, headers: dict[str, str] | None = None
    ) -> None:
        self.requests += 1
        self._asked.set()
        self._asked = trio.Event()
        await trio.sleep_forever()

    async def until_asked(self, count: int) -> None:
        while self.requests < count:
            await self._asked.wait()

    def cached_listings(self) -> list[object]:
        return []  # no other member lists the files: one source each


@pytest.fixture
async def registry() -> AsyncIterator[LiveRegistry]:
    """A real registry listing BOB."""
    async with live_registry([BOB]) as registry:
        yield registry


def downloads_in(tmp_path: Path, registry: LiveRegistry) -> tuple[Downloads, Mute, History]:
    members = registry.directory("a" * 52)
    pool = Mute()
    history = History(tmp_path / "history.sqlite3")
    (tmp_path / "downloads").mkdir()
    downloads = Downloads(cast(PeerPool, pool), members, tmp_path / "downloads", history)
    return downloads, pool, history


def entry(number: int) -> SharedFile:
    sha = hashlib.sha256(str(number).encode()).hexdigest()
    return SharedFile(path=f"f{number}.bin", size=100, mtime=0.0, sha256=sha)


async def all_asking(pool: Mute) -> None:
    """Until every running transfer has asked its member (each first looks the member
    up at a real registry, over a socket: on a busy machine that takes a while)."""
    with trio.fail_after(30):
        await pool.until_asked(downloads_module.CONCURRENT_TRANSFERS)
    await trio.testing.wait_all_tasks_blocked()


def tasks_alive() -> int:
    """Every task of this trio run (public API: the root task's tree)."""
    root = trio.lowlevel.current_root_task()
    assert root is not None
    count, pending = 0, [root]
    while pending:
        task = pending.pop()
        count += 1
        pending.extend(t for nursery in task.child_nurseries for t in nursery.child_tasks)
    return count


async def test_a_queued_transfer_is_a_record_not_a_task(
    registry: LiveRegistry, tmp_path: Path
) -> None:
    """1 000 queued transfers cost 8 running tasks; the rest start as slots free."""
    downloads, pool, _ = downloads_in(tmp_path, registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(downloads.run)
        # The registry's kept-alive connection (one task there) opened before counting.
        assert await registry.client.member(BOB.id) is not None
        before = tasks_alive()
        transfers = [await downloads.start(BOB, entry(n)) for n in range(1000)]
        await all_asking(pool)
        assert pool.requests == downloads_module.CONCURRENT_TRANSFERS
        assert tasks_alive() - before == downloads_module.CONCURRENT_TRANSFERS
        assert [t.to_json()["state"] for t in transfers[8:]] == ["queued"] * 992
        nursery.cancel_scope.cancel()


async def test_cancelling_a_queued_transfer_ends_it_and_leaves_the_partial_file(
    registry: LiveRegistry,
    tmp_path: Path,
) -> None:
    """Its bytes' partial file may be kept from a failed transfer: not the cancel's to remove."""
    downloads, pool, history = downloads_in(tmp_path, registry)
    waiting = entry(99)
    partial = tmp_path / "downloads" / f".{waiting.sha256}.p2pd-partial"
    partial.write_bytes(b"kept from an earlier attempt")
    async with trio.open_nursery() as nursery:
        await nursery.start(downloads.run)
        for n in range(downloads_module.CONCURRENT_TRANSFERS):
            await downloads.start(BOB, entry(n))
        queued = await downloads.start(BOB, waiting)
        await all_asking(pool)
        assert downloads.cancel(queued.queued.id)
        assert downloads.cancel(queued.queued.id)  # twice: still one outcome
        with trio.fail_after(5):
            await queued.done.wait()
        assert queued.outcome is not None and queued.outcome.status == "cancelled"
        assert queued.queued.id not in downloads.active
        assert partial.read_bytes() == b"kept from an earlier attempt"
        assert pool.requests == downloads_module.CONCURRENT_TRANSFERS  # it never asked
        nursery.cancel_scope.cancel()
    assert [o.id for o in history.file.outcomes()] == [queued.queued.id]


async def test_the_queue_is_bounded(
    registry: LiveRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downloads_module, "MAX_TRANSFERS", 20)
    downloads, _, _ = downloads_in(tmp_path, registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(downloads.run)
        first = [await downloads.start(BOB, entry(n)) for n in range(20)]
        assert downloads.room == 0
        with pytest.raises(QueueFull, match="20 transfers are queued or running"):
            await downloads.start(BOB, entry(20))
        assert downloads.joins(entry(3))
        assert await downloads.start(BOB, entry(3)) is first[3]  # joining takes no room
        assert downloads.cancel(first[-1].queued.id)
        with trio.fail_after(5):
            await first[-1].done.wait()
        assert downloads.room == 1
        await downloads.start(BOB, entry(20))
        nursery.cancel_scope.cancel()
