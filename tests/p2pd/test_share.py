"""The share index: pure rules, the hash cache, and the real watchdog observer."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
from hypothesis import given
from hypothesis import strategies as st

from p2pd import share as share_module
from p2pd.index import FileEntry, ShareIndex, is_shareable_relpath
from p2pd.share import HashCache, Share, scan

WAIT = 10  # seconds: generous bounds for real filesystem events, never a sleep


def entry(path: str, sha: str = "a" * 64, size: int = 1) -> FileEntry:
    return FileEntry(path, size, 0.0, sha)


def test_generation_bumps_only_on_real_changes() -> None:
    index = ShareIndex()
    assert index.replace_all([entry("a"), entry("b")])
    generation = index.generation
    assert not index.replace_all([entry("b"), entry("a")])
    assert not index.upsert(entry("a"))
    assert index.generation == generation
    assert index.upsert(entry("a", sha="b" * 64))
    assert index.remove("b")
    assert not index.remove("b")
    assert index.generation == generation + 2
    assert [e.path for e in index.listing()] == ["a"]


def test_remove_tree_and_lookup_by_hash() -> None:
    index = ShareIndex()
    index.replace_all([entry("d/x", "1" * 64), entry("d/y"), entry("dz", "1" * 64)])
    assert [e.path for e in index.by_sha256("1" * 64)] == ["d/x", "dz"]
    assert index.remove_tree("d")
    assert [e.path for e in index.listing()] == ["dz"]
    assert not index.remove_tree("nothing")


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("a.txt", True),
        ("dir/sub/ünïcode ☃.txt", True),
        (".hidden", False),
        ("dir/.partial", False),
        ("../x", False),
        ("a/../b", False),
        ("/abs", False),
        ("a//b", False),
        ("a\\b", False),
        ("a\x00b", False),
        ("", False),
    ],
)
def test_shareable_paths(path: str, ok: bool) -> None:
    assert is_shareable_relpath(path) == ok


@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from("0123")), max_size=30))
def test_generation_counts_exactly_the_changes(ops: list[tuple[str, str]]) -> None:
    index = ShareIndex()
    model: dict[str, str] = {}
    changes = 0
    for path, digit in ops:
        new = entry(path, digit * 64)
        changes += model.get(path) != new.sha256
        model[path] = new.sha256
        index.upsert(new)
    assert index.generation == changes
    assert {e.path: e.sha256 for e in index.listing()} == model


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_tree(root: Path, outside: Path) -> None:
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "nested" / "deeper" / "f.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    (root / "Grüße ☃.txt").write_text("hi")
    (root / "empty").write_bytes(b"")
    (root / ".hidden").write_text("no")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("no")
    (root / ".photo.jpg.p2pd-partial").write_bytes(b"partial download")
    outside.write_text("outside")
    (root / "escape").symlink_to(outside)
    (root / "inside-link").symlink_to(root / "empty")
    os.mkfifo(root / "fifo")


def test_scan_shares_the_right_files_with_the_right_hashes(tmp_path: Path) -> None:
    root = tmp_path / "share"
    root.mkdir()
    make_tree(root, tmp_path / "outside.txt")
    entries = {e.path: e for e in scan(root, HashCache(tmp_path / "cache.sqlite3"))}
    assert sorted(entries) == ["Grüße ☃.txt", "empty", "inside-link", "nested/deeper/f.bin"]
    data = (root / "nested" / "deeper" / "f.bin").read_bytes()
    assert entries["nested/deeper/f.bin"].sha256 == sha(data)
    assert entries["nested/deeper/f.bin"].size == len(data)
    assert entries["empty"].sha256 == sha(b"")


def test_a_restart_does_not_rehash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "share"
    root.mkdir()
    for i in range(20):
        (root / f"f{i}").write_bytes(os.urandom(1000))
    first = scan(root, HashCache(tmp_path / "cache.sqlite3"))
    hashed: list[Path] = []
    real = share_module._sha256

    def counting(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(share_module, "_sha256", counting)
    again = scan(root, HashCache(tmp_path / "cache.sqlite3"))  # a new process's cache
    assert sorted(again, key=lambda e: e.path) == sorted(first, key=lambda e: e.path)
    assert hashed == []
    (root / "f3").write_bytes(b"changed")
    scan(root, HashCache(tmp_path / "cache.sqlite3"))
    assert hashed == [root / "f3"]


async def wait_for(share: Share, path: str, digest: str | None) -> None:
    with trio.fail_after(WAIT):
        while (share.index.get(path) or FileEntry("", 0, 0, "")).sha256 != (digest or ""):
            await share.changed()


@asynccontextmanager
async def running_share(tmp_path: Path, **options: Any) -> AsyncIterator[tuple[Share, Path]]:
    """A Share of a fresh folder, indexed and being kept current; stopped afterwards."""
    root = tmp_path / "share"
    root.mkdir()
    share = Share(root, tmp_path, **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(share.run)
        yield share, root
        nursery.cancel_scope.cancel()


async def test_changes_reach_the_index(tmp_path: Path) -> None:
    async with running_share(tmp_path) as (share, root):
        assert share.watching and share.warning is None
        (root / "new.txt").write_bytes(b"one")
        await wait_for(share, "new.txt", sha(b"one"))
        (root / "new.txt").write_bytes(b"two")
        await wait_for(share, "new.txt", sha(b"two"))
        (root / "new.txt").rename(root / "moved.txt")
        await wait_for(share, "moved.txt", sha(b"two"))
        assert share.index.get("new.txt") is None
        (root / "moved.txt").unlink()
        await wait_for(share, "moved.txt", None)
        (root / "sub").mkdir()
        (root / "sub" / ".partial").write_bytes(b"x")
        (root / "sub" / "f").write_bytes(b"f")
        await wait_for(share, "sub/f", sha(b"f"))
        assert share.index.get("sub/.partial") is None


async def test_a_file_written_in_chunks_is_indexed_with_its_final_hash(tmp_path: Path) -> None:
    async with running_share(tmp_path) as (share, root):
        chunks = [os.urandom(64 * 1024) for _ in range(8)]
        with (root / "big.bin").open("wb") as f:
            for chunk in chunks:
                f.write(chunk)
                f.flush()
                await trio.lowlevel.checkpoint()
        await wait_for(share, "big.bin", sha(b"".join(chunks)))


class FullInotify:
    """Stands in for the kernel's refusal when fs.inotify.max_user_watches is exhausted."""

    def schedule(self, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    def is_alive(self) -> bool:
        return False


async def test_inotify_limit_falls_back_to_rescans(tmp_path: Path) -> None:
    async with running_share(tmp_path, poll_interval=0.2, observer_factory=FullInotify) as (
        share,
        root,
    ):
        assert not share.watching
        assert share.warning is not None
        assert "fs.inotify.max_user_watches" in share.warning
        (root / "late.txt").write_bytes(b"late")
        await wait_for(share, "late.txt", sha(b"late"))


async def test_rescan_on_demand(tmp_path: Path) -> None:
    async with running_share(tmp_path, poll_interval=3600, observer_factory=FullInotify) as (
        share,
        root,
    ):
        (root / "x").write_bytes(b"x")
        await share.rescan()
        assert share.index.get("x") is not None
