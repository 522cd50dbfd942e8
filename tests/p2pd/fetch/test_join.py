"""A fetch of a file already on its way joins that transfer: one id, one download, one file."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
import trio

from p2pcommon.http.client import Head
from p2pcommon.models import Member, SharedFile
from p2pd.fetch.downloads import Downloads, Transfer
from p2pd.fetch.history import History
from p2pd.fetch.model import Queued, State
from p2pd.peer.client import PeerPool
from p2pd.peer.files import repr_digest
from tests.p2pd.fetch.test_resume import (
    SIZE,
    THROTTLE,
    killed_mid_transfer,
    members,
    outcome_of,
    share_big,
)
from tests.p2pd.live_registry import LiveRegistry, live_registry
from tests.p2pd.test_e2e import FAST, meet
from tests.support import make_cert_pem, run_p2pd, run_registryd

DATA = b"the same bytes, asked for twice\n" * 1000
SHA = hashlib.sha256(DATA).hexdigest()
BOB = Member(id="b" * 52, name="bob", addresses=["127.0.0.1:1"], cert=make_cert_pem(), last_seen=0)
ENTRY = SharedFile(path="docs/a.txt", size=len(DATA), mtime=0.0, sha256=SHA)


class Connection:
    reusable = False

    def __init__(self, gate: trio.Event) -> None:
        self._gate = gate

    async def body_chunks(self) -> AsyncIterator[bytes]:
        await self._gate.wait()
        yield DATA

    async def body(self, limit: int) -> bytes:
        return b""

    def take_body(self, head: Head) -> None:
        return None  # a small body: read through body_chunks

    async def aclose(self) -> None:
        pass


class Pool:
    """Serves DATA once ``gate`` is set; counts the file requests."""

    def __init__(self) -> None:
        self.gate = trio.Event()
        self.requested = trio.Event()
        self.requests = 0

    async def request(
        self, member: Member, target: str, headers: dict[str, str] | None = None
    ) -> tuple[Connection, Head]:
        self.requests += 1
        self.requested.set()
        fields = {"content-length": str(len(DATA)), "repr-digest": repr_digest(SHA)}
        return Connection(self.gate), Head(200, list(fields.items()))

    async def release(self, connection: Connection) -> None:
        pass

    def cached_listings(self) -> list[object]:
        return []  # no other member lists the file: one source, today's whole-file path


@pytest.fixture
async def registry() -> AsyncIterator[LiveRegistry]:
    """A real registry listing BOB."""
    async with live_registry([BOB]) as registry:
        yield registry


def downloads_in(tmp_path: Path, registry: LiveRegistry) -> tuple[Downloads, Pool, History]:
    members = registry.directory("a" * 52)
    pool = Pool()
    history = History(tmp_path / "history.sqlite3")
    (tmp_path / "downloads").mkdir()
    downloads = Downloads(cast(PeerPool, pool), members, tmp_path / "downloads", history)
    return downloads, pool, history


async def start_together(downloads: Downloads, *entries: SharedFile) -> list[Transfer]:
    """``Downloads.start`` of each entry, all at once; the transfers in the entries' order."""
    started: dict[int, Transfer] = {}

    async def start(number: int, entry: SharedFile) -> None:
        started[number] = await downloads.start(BOB, entry)

    async with trio.open_nursery() as nursery:
        for number, entry in enumerate(entries):
            nursery.start_soon(start, number, entry)
    return [started[number] for number in range(len(entries))]


async def test_fetches_of_a_file_on_its_way_join_its_transfer(
    registry: LiveRegistry, tmp_path: Path
) -> None:
    downloads, pool, history = downloads_in(tmp_path, registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(downloads.run)
        first, second = await start_together(downloads, ENTRY, ENTRY)
        assert first is second
        await pool.requested.wait()
        assert first.state == "downloading"
        assert await downloads.start(BOB, ENTRY) is first  # one more, while it runs
        assert list(downloads.active) == [first.queued.id]
        pool.gate.set()
        await first.done.wait()
        assert first.outcome is not None and first.outcome.status == "ok"
        assert pool.requests == 1
        landed = tmp_path / "downloads" / "docs" / "a.txt"
        assert sorted(p.name for p in landed.parent.iterdir()) == ["a.txt"]
        assert [o.id for o in history.file.outcomes()] == [first.queued.id]
        # Ended: the same content already at its destination succeeds at once.
        again = await downloads.start(BOB, ENTRY)
        assert again is not first and again.done.is_set()
        assert again.outcome is not None and again.outcome.path == str(landed)
        assert pool.requests == 1
        nursery.cancel_scope.cancel()


async def test_a_fetch_joins_a_transfer_resumed_after_a_restart(
    registry: LiveRegistry, tmp_path: Path
) -> None:
    downloads, pool, history = downloads_in(tmp_path, registry)
    persisted = Queued("0badcafe", BOB.id, BOB.name, ENTRY.path, SHA, ENTRY.size, 1.0)
    history.enqueue(persisted)
    async with trio.open_nursery() as nursery:
        await nursery.start(downloads.run)
        transfer = await downloads.start(BOB, ENTRY)
        assert transfer.queued == persisted
        pool.gate.set()
        await transfer.done.wait()
        assert transfer.outcome is not None and transfer.outcome.status == "ok"
        assert [o.id for o in history.file.outcomes()] == ["0badcafe"]
        assert history.file.queued() == []
        nursery.cancel_scope.cancel()


async def test_other_destinations_and_cancelled_transfers_are_not_joined(
    registry: LiveRegistry, tmp_path: Path
) -> None:
    downloads, pool, history = downloads_in(tmp_path, registry)
    copy = SharedFile(path="copy.txt", size=ENTRY.size, mtime=0.0, sha256=SHA)
    async with trio.open_nursery() as nursery:
        await nursery.start(downloads.run)
        first, joined, elsewhere = await start_together(downloads, ENTRY, ENTRY, copy)
        assert joined is first
        assert elsewhere is not first  # same bytes, another file: its own transfer
        assert downloads.cancel(first.queued.id)
        fresh = await downloads.start(BOB, ENTRY)
        assert fresh is not first  # the user asked again after cancelling: a new transfer
        await first.done.wait()
        assert first.outcome is not None and first.outcome.status == "cancelled"
        pool.gate.set()
        await fresh.done.wait()
        await elsewhere.done.wait()
        assert fresh.outcome is not None and fresh.outcome.status == "ok"
        assert elsewhere.outcome is not None and elsewhere.outcome.status == "ok"
        nursery.cancel_scope.cancel()


async def test_two_detached_fetches_of_one_file_are_one_transfer(tmp_path: Path) -> None:
    data = os.urandom(SIZE)
    share_big(tmp_path, "bob", data)
    async with members(tmp_path, bob=THROTTLE, alice=FAST) as peers:
        alice = peers["alice"]
        ids: list[str] = []

        async def fetch() -> None:
            ids.append((await alice.actl_json("fetch", "--detach", "bob", "big.bin"))["id"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch)
            nursery.start_soon(fetch)
        assert len(ids) == 2 and ids[0] == ids[1]
        downloads: list[dict[str, Any]] = await alice.actl_json("downloads")
        assert [d["id"] for d in downloads] in ([ids[0]], [])
        outcome = await outcome_of(alice, ids[0])
        assert outcome["status"] == "ok", outcome
        assert sorted(p.name for p in alice.download_dir.iterdir()) == ["big.bin"]
        assert (alice.download_dir / "big.bin").read_bytes() == data
        assert [h["id"] for h in await alice.actl_json("history")] == [ids[0]]


async def test_a_fetch_joins_what_the_daemon_resumes_after_a_restart(tmp_path: Path) -> None:
    share_big(tmp_path, "bob", os.urandom(SIZE))
    slow = FAST + f"upload_rate_limit = {3 * 1024 * 1024}\n"
    with run_registryd(tmp_path, {"REGISTRYD_PEER_TTL": "3"}) as registry:
        urls = [registry.url]
        with run_p2pd(tmp_path, "bob", urls, extra_config=slow) as bob:
            resumed_id = await killed_mid_transfer(tmp_path, urls, bob, 1)
            with run_p2pd(tmp_path, "alice", urls, extra_config=FAST) as alice:
                await meet(alice, bob)
                joined = await alice.actl_json("fetch", "--detach", "bob", "big.bin")
                assert joined == {"id": resumed_id}
                await alice.actl_json("cancel", resumed_id)
                outcome = await outcome_of(alice, resumed_id)
                assert outcome["status"] == "cancelled"
                assert list(alice.download_dir.iterdir()) == []
                assert [h["id"] for h in await alice.actl_json("history")] == [resumed_id]


async def test_a_cancelled_transfer_is_never_joined_even_before_its_task_notices(
    registry: LiveRegistry,
    tmp_path: Path,
) -> None:
    """Cancelled just as its task passed a cancel-shielded checkpoint (acquiring its
    slot), the task may still set a busy state once more: a new fetch starts anew."""
    downloads, pool, history = downloads_in(tmp_path, registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(downloads.run)
        first = await downloads.start(BOB, ENTRY)
        assert downloads.cancel(first.queued.id)
        first.state = State.CONNECTING  # what the task may still write after the cancel
        assert first.to_json()["state"] == "cancelling"
        fresh = await downloads.start(BOB, ENTRY)
        assert fresh is not first
        pool.gate.set()
        await first.done.wait()
        await fresh.done.wait()
        assert first.outcome is not None and first.outcome.status == "cancelled"
        assert fresh.outcome is not None and fresh.outcome.status == "ok"
        nursery.cancel_scope.cancel()
