"""Serving stays inside the share: files opened without following links, and only
while they are exactly the file that was indexed (docs/protocol.md §4, §8)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from p2pcommon.http.events import Request, Response
from p2pcommon.models import Member
from p2pd.peer.server import PeerServer
from p2pd.share.safeopen import FileChanged, open_indexed
from p2pd.share.watching import Share
from p2pd.tls.contexts import ServerContexts
from p2pd.tls.identity import load_or_create
from tests.p2pd.live_registry import live_registry
from tests.support import make_cert_pem

PEER = "p" * 52
SECRET = b"the bytes of identity.key, outside the share"


@dataclass
class Served:
    share: Share
    server: PeerServer
    root: Path
    outside: Path

    async def get(self, path: str) -> tuple[int, bytes]:
        request = Request("GET", f"/files/{path}", [], b"", "127.0.0.1", client_id=PEER)
        with trio.fail_after(5):  # never stalls: a FIFO in a file's place included
            response = await self.server.handle(request)
            return response.status, await body(response)


async def body(response: Response) -> bytes:
    if response.stream is None:
        return response.body
    chunks = []
    try:
        async for chunk in response.stream:
            chunks.append(chunk)
    finally:
        aclose = getattr(response.stream, "aclose", None)
        if aclose is not None:
            await aclose()
    return b"".join(chunks)


@asynccontextmanager
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    root, outside, state = tmp_path / "share", tmp_path / "outside", tmp_path / "state"
    (root / "docs").mkdir(parents=True)
    outside.mkdir()
    state.mkdir()
    (root / "docs" / "secret.txt").write_bytes(b"x" * len(SECRET))
    (root / "a.txt").write_bytes(b"a" * len(SECRET))
    (outside / "secret.txt").write_bytes(SECRET)
    identity, _ = load_or_create(state)
    peer = Member(id=PEER, name="peer", addresses=[], cert=make_cert_pem(), last_seen=0)
    share = Share(root, state)
    await share.rescan()
    async with live_registry([peer]) as registry:
        directory = registry.directory(identity.id)
        server = PeerServer(
            share, directory, ServerContexts(identity), upload_slots=2, rate_limit=0
        )
        yield Served(share, server, root, outside)
    assert server.stats.active == 0  # every slot and file handed back


def same_times(new: Path, old_ns: int) -> None:
    os.utime(new, ns=(old_ns, old_ns), follow_symlinks=False)


async def test_an_indexed_file_is_served(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        assert await s.get("docs/secret.txt") == (200, b"x" * len(SECRET))


async def test_a_folder_swapped_for_a_link_after_indexing_serves_nothing(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        docs = s.root / "docs"
        mtime = (docs / "secret.txt").stat().st_mtime_ns
        docs.rename(s.root / ".docs-old")
        docs.symlink_to(s.outside, target_is_directory=True)
        same_times(s.outside / "secret.txt", mtime)  # same path, size and mtime
        status, data = await s.get("docs/secret.txt")
        assert status == 404
        assert SECRET not in data
        assert s.share._dirty.is_set()  # a rescan is asked for
        await s.share.rescan()
        assert s.share.index.get("docs/secret.txt") is None
        assert s.share.skipped == {
            "docs": "a symbolic link (links are not followed, so not shared)"
        }


async def test_a_file_swapped_for_a_link_serves_nothing(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        (s.root / "a.txt").unlink()
        (s.root / "a.txt").symlink_to(s.outside / "secret.txt")
        status, data = await s.get("a.txt")
        assert status == 404 and SECRET not in data


async def test_a_same_size_file_put_in_place_is_refused(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        path = s.root / "a.txt"
        mtime = path.stat().st_mtime_ns
        (s.root / "new").write_bytes(b"b" * len(SECRET))
        same_times(s.root / "new", mtime)
        (s.root / "new").rename(path)  # same size and mtime, another inode
        status, data = await s.get("a.txt")
        assert status == 503 and b"b" * 10 not in data
        assert s.share._dirty.is_set()
        await s.share.rescan()  # after the rescan the new file is served
        assert await s.get("a.txt") == (200, b"b" * len(SECRET))


async def test_a_file_changed_in_place_is_refused(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        path = s.root / "a.txt"
        with path.open("r+b") as f:
            f.write(b"changed")  # same inode and size, a new mtime
        status, _ = await s.get("a.txt")
        assert status == 503


async def test_a_fifo_put_in_place_neither_blocks_nor_serves(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        (s.root / "a.txt").unlink()
        os.mkfifo(s.root / "a.txt")
        status, _ = await s.get("a.txt")
        assert status == 503


async def test_a_removed_file_is_404(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        (s.root / "a.txt").unlink()
        assert (await s.get("a.txt"))[0] == 404


@pytest.mark.parametrize(
    ("target", "status"),
    [
        (".hidden", 404),
        ("docs/.partial", 404),
        ("%2e%2e/outside/secret.txt", 400),
        ("docs/%2e%2e/%2e%2e/outside/secret.txt", 400),
        ("a%5Cb", 400),
        ("a%01b", 400),
        ("a%C2%85b", 400),  # a C1 control character
        ("%ff.txt", 400),
        ("a%00b", 400),
    ],
)
async def test_targets_follow_the_one_path_rule(tmp_path: Path, target: str, status: int) -> None:
    async with served(tmp_path) as s:
        (s.root / ".hidden").write_bytes(b"hidden")
        await s.share.rescan()
        got, data = await s.get(target)
        assert got == status and SECRET not in data and b"hidden" not in data


def test_open_indexed_checks_identity(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"data")
    st = (tmp_path / "f").stat()
    from p2pd.share.index import FileEntry

    entry = FileEntry(
        "f",
        4,
        0.0,
        hashlib.sha256(b"data").hexdigest(),
        dev=st.st_dev,
        ino=st.st_ino,
        mtime_ns=st.st_mtime_ns,
    )
    with open_indexed(tmp_path, entry) as handle:
        assert handle.read() == b"data"
    with pytest.raises(FileChanged):
        open_indexed(tmp_path, FileEntry("f", 4, 0.0, entry.sha256))  # no identity recorded
