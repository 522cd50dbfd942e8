"""Alternate sources: looked up only when the chosen member fails, kept listings first.

Real PeerServers on loopback, a real registry they all look each other up
at, and p2pd's own Downloads and PeerPool; each server's ``listings_served``
tells whether it was asked for its listing.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import trio

from p2pcommon.models import Member, SharedFile
from p2pd.fetch import sources
from p2pd.fetch.downloads import Downloads
from p2pd.fetch.history import History
from p2pd.fetch.model import Queued
from p2pd.membership.directory import Directory
from p2pd.peer.client import PeerPool
from p2pd.tls.identity import Identity, NetworkCA, load_or_create
from tests.p2pd.live_registry import live_registry
from tests.p2pd.tls.test_network_ca import DATA, Served, member_of, served
from tests.support import SECRET, free_port

ENTRY = SharedFile(
    path="data.bin", size=len(DATA), mtime=time.time(), sha256=hashlib.sha256(DATA).hexdigest()
)


@dataclass
class Scene:
    me: Identity
    pool: PeerPool
    directory: Directory
    #: Every member, by name.
    members: dict[str, Member]
    downloads: Downloads
    #: Members that share DATA (b, c) or not (d).
    b: Served
    c: Served
    d: Served

    def member(self, name: str) -> Member:
        # By name only: resolve() also matches id prefixes, and random ids may start with "d".
        return self.members[name]

    def asked(self) -> dict[str, int]:
        return {
            name: s.server.stats.listings_served
            for name, s in (("b", self.b), ("c", self.c), ("d", self.d))
        }

    async def fetch(self, chosen: Member) -> str:
        """Fetch DATA from ``chosen``; the name of the member that served it."""
        transfer = await self.downloads.start(chosen, ENTRY)
        await transfer.done.wait()
        assert transfer.outcome is not None and transfer.outcome.status == "ok", transfer.outcome
        await trio.Path(transfer.outcome.path).unlink()  # the next fetch transfers again
        return transfer.outcome.peer_name


@asynccontextmanager
async def scene(tmp_path: Path) -> AsyncIterator[Scene]:
    network = NetworkCA.from_secret(SECRET)
    me, _ = load_or_create(tmp_path / "me" / "state", network)
    (tmp_path / "me" / "downloads").mkdir()
    async with AsyncExitStack() as stack:
        registry = await stack.enter_async_context(live_registry())
        b, c, d = [
            await stack.enter_async_context(
                served(tmp_path / name, network, files=files, registry=registry)
            )
            for name, files in (("b", None), ("c", None), ("d", {"other.bin": b"other"}))
        ]
        members = {
            name: member_of(s.identity, name, s.port)
            for name, s in zip("bcd", (b, c, d), strict=True)
        }
        await registry.add(member_of(me, "me"), *members.values())
        directory = registry.directory(me.id)
        pool = PeerPool(me)
        stack.push_async_callback(pool.aclose)
        history = History(tmp_path / "me" / "history.sqlite3")
        downloads = Downloads(pool, directory, tmp_path / "me" / "downloads", history)
        nursery = await stack.enter_async_context(trio.open_nursery())
        await nursery.start(downloads.run)
        yield Scene(me, pool, directory, members, downloads, b, c, d)
        nursery.cancel_scope.cancel()


async def test_kept_listings_are_consulted_before_anyone_is_asked(tmp_path: Path) -> None:
    async with scene(tmp_path) as s:
        await s.pool.listing(s.member("b"))  # kept: names the bytes
        await s.pool.listing(s.member("d"))  # kept: does not
        assert s.asked() == {"b": 1, "c": 0, "d": 1}

        # A member that is online serves it: nobody else is asked.
        assert await s.fetch(s.member("c")) == "c"
        assert s.asked() == {"b": 1, "c": 0, "d": 1}

        # The chosen member is gone: b comes from its kept listing (not asked
        # again), d is ruled out by its own, and only c, with none kept, is asked.
        gone = member_of(s.me, "gone", free_port())
        gone = gone.model_copy(update={"id": "a" * 52})
        assert await s.fetch(gone) == "b"
        assert s.asked() == {"b": 1, "c": 1, "d": 1}


async def test_at_most_32_members_are_asked_from_one_page_at_a_random_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Among 60 members, the ones asked for their listing are a bounded sample."""
    monkeypatch.setattr(sources, "ALTERNATES_DEADLINE", 1.0)
    network = NetworkCA.from_secret(SECRET)
    me, _ = load_or_create(tmp_path / "me", network)
    dialled: list[str] = []

    async def closing(stream: trio.SocketStream) -> None:
        dialled.append("x")  # accepted and closed: that member has no listing to give
        await stream.aclose()

    async with live_registry() as registry, trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, closing, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        crowd = [
            member_of(load_or_create(tmp_path / f"m{n}", network)[0], f"m{n}", port)
            for n in range(60)
        ]
        await registry.add(member_of(me, "me"), *crowd)
        pool = PeerPool(me)
        try:
            queued = Queued("0badcafe", "a" * 52, "gone", ENTRY.path, ENTRY.sha256, ENTRY.size, 1)
            found = await sources.find_alternates(pool, registry.directory(me.id), queued)
        finally:
            await pool.aclose()
        assert found == []
        assert len(dialled) == sources.MAX_ALTERNATES_ASKED  # of 60
        nursery.cancel_scope.cancel()
