"""The share index: pure rules, the hash cache, and the real watchdog observer."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
from hypothesis import given
from hypothesis import strategies as st

from p2pcommon.boundary import failures
from p2pd.share import scan as scan_module
from p2pd.share import watching as share_module
from p2pd.share.index import FileEntry, ShareIndex, is_shareable_relpath
from p2pd.share.scan import HashCache, Skipped, scan
from p2pd.share.watching import Share

WAIT = 10  # seconds: generous bounds for real filesystem events, never a sleep


def entry(path: str, sha: str = "a" * 64, size: int = 1) -> FileEntry:
    return FileEntry(path, size, 0.0, sha)


def test_generation_bumps_only_on_real_changes() -> None:
    index = ShareIndex()
    assert index.replace_all([entry("a"), entry("b")])
    generation = index.generation
    assert not index.replace_all([entry("b"), entry("a")])
    assert not index.upsert_many([entry("a")])
    assert index.generation == generation
    assert index.upsert_many([entry("a", sha="b" * 64), entry("c")])  # one batch, one change
    assert index.replace_all([entry("a", sha="b" * 64), entry("c")])  # "b" is gone
    assert not index.replace_all([entry("c"), entry("a", sha="b" * 64)])
    assert index.generation == generation + 2
    assert [e.path for e in index.listing()] == ["a", "c"]


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
        index.upsert_many([new])
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
    skipped = Skipped()
    entries = {
        e.path: e for e in scan(root, HashCache(tmp_path / "cache.sqlite3"), skipped=skipped)
    }
    # Links are never followed, so a link is not shared even when it points inside.
    assert sorted(entries) == ["Grüße ☃.txt", "empty", "nested/deeper/f.bin"]
    assert sorted(skipped.examples) == ["escape", "fifo", "inside-link"]
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
    real = scan_module._hash_file

    def counting(hasher: Any, fd: int, size: int, check: Any = None) -> Any:
        hashed.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        return real(hasher, fd, size, check)

    monkeypatch.setattr(scan_module, "_hash_file", counting)
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


#: Options for a Share that neither watches nor polls: only explicit rescans.
UNWATCHED: dict[str, Any] = {"poll_interval": 3600, "observer_factory": FullInotify}


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


# -- strange entries never end the daemon (docs/protocol.md §8) ---------------------------


def make_strange_entries(root: Path, outside: Path) -> None:
    """Everything a member with write access could leave in a share, and good files."""
    (root / "good.txt").write_bytes(b"good")
    (root / "sub").mkdir()
    (root / "sub" / "fine.txt").write_bytes(b"fine")
    with open(os.path.join(os.fsencode(root), b"latin1-\xe9t\xe9.txt"), "wb") as f:
        f.write(b"not UTF-8 name")  # os.walk / scandir would give a surrogate-escaped str
    os.mkdir(os.path.join(os.fsencode(root), b"dir-\xff"))
    with open(os.path.join(os.fsencode(root), b"dir-\xff", b"inside.txt"), "wb") as f:
        f.write(b"under a non-UTF-8 folder")
    (root / "ctrl\x01char.txt").write_bytes(b"control character")
    (root / "back\\slash.txt").write_bytes(b"backslash")
    (root / "self-loop").symlink_to("self-loop")
    (root / "loop-a").symlink_to("loop-b")
    (root / "loop-b").symlink_to("loop-a")
    (root / "dangling").symlink_to(root / "nothing-here")
    (root / "escape.txt").symlink_to(outside / "secret.txt")
    (root / "escape-dir").symlink_to(outside)
    os.mkfifo(root / "fifo")
    (root / "sub" / "dev-null").unlink(missing_ok=True)
    with contextlib.suppress(PermissionError):
        os.mknod(root / "sub" / "dev-null", stat.S_IFCHR | 0o600, os.makedev(1, 3))


GOOD = {"good.txt": b"good", "sub/fine.txt": b"fine"}


def test_strange_entries_are_skipped_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, outside = tmp_path / "share", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    make_strange_entries(root, outside)
    with socket.socket(socket.AF_UNIX) as sock:
        monkeypatch.chdir(root)  # a short relative name: AF_UNIX paths are limited to 108 bytes
        sock.bind("sock")
        skipped = Skipped()
        with caplog.at_level(logging.WARNING, logger="p2pd.share"):
            entries = scan(root, HashCache(tmp_path / "cache.sqlite3"), skipped=skipped)
    assert {e.path: e.sha256 for e in entries} == {p: sha(d) for p, d in GOOD.items()}
    reasons = skipped.examples
    assert "not valid UTF-8" in reasons["latin1-\\xe9t\\xe9.txt"]
    assert "not valid UTF-8" in reasons["dir-\\xff"]  # not walked into
    assert "control characters" in reasons["ctrl\\x01char.txt"]
    assert "backslash" in reasons["back\\slash.txt"]
    for link in ("self-loop", "loop-a", "loop-b", "dangling", "escape.txt", "escape-dir"):
        assert "symbolic link" in reasons[link], link
    assert "FIFO" in reasons["fifo"]
    assert "socket" in reasons["sock"]
    expected = 12 + (root / "sub" / "dev-null").exists()
    if (root / "sub" / "dev-null").exists():
        assert "device" in reasons["sub/dev-null"]
    assert skipped.count == expected == len(reasons)
    # One warning line each, every line printable.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == expected
    assert all(w.isprintable() for w in warnings)
    # A later scan does not repeat the warnings for what it already reported.
    caplog.clear()
    again = Skipped(skipped.reported)
    with caplog.at_level(logging.WARNING, logger="p2pd.share"):
        scan(root, HashCache(tmp_path / "cache.sqlite3"), skipped=again)
    assert again.count == expected
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_skipped_examples_are_bounded(tmp_path: Path) -> None:
    root = tmp_path / "share"
    root.mkdir()
    for i in range(scan_module.MAX_SKIPPED_EXAMPLES + 30):
        os.mkfifo(root / f"fifo{i}")
    skipped = Skipped()
    assert scan(root, HashCache(tmp_path / "c.sqlite3"), skipped=skipped) == []
    assert skipped.count == scan_module.MAX_SKIPPED_EXAMPLES + 30
    assert len(skipped.examples) == scan_module.MAX_SKIPPED_EXAMPLES


async def test_a_running_share_survives_strange_entries(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    async with running_share(tmp_path) as (share, root):
        make_strange_entries(root, outside)
        for path, data in GOOD.items():
            await wait_for(share, path, sha(data))
        assert share.watching
        assert share.skipped_count >= 12
        assert share.warning is not None and "not shared" in share.warning
        status = share.status()
        assert status["skipped_count"] == share.skipped_count
        assert status["indexing"] is False
        # Still watching: a later file is indexed too.
        (root / "later.txt").write_bytes(b"later")
        await wait_for(share, "later.txt", sha(b"later"))
        assert sorted(e.path for e in share.index.listing()) == [
            "good.txt",
            "later.txt",
            "sub/fine.txt",
        ]


def test_a_file_that_cannot_be_read_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "share"
    root.mkdir()
    (root / "ok").write_bytes(b"ok")
    (root / "bad").write_bytes(b"bad sector")
    real = scan_module._hash_file

    def failing(hasher: Any, fd: int, size: int, check: Any = None) -> Any:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/bad"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(hasher, fd, size, check)

    monkeypatch.setattr(scan_module, "_hash_file", failing)
    skipped = Skipped()
    entries = scan(root, HashCache(tmp_path / "c.sqlite3"), skipped=skipped)
    assert [e.path for e in entries] == ["ok"]
    assert skipped.examples == {"bad": "it cannot be read: Input/output error"}


UNREADABLE_CHILD = """
import json, sys
from pathlib import Path
from p2pd.share.scan import HashCache, Skipped, scan
skipped = Skipped()
entries = scan(Path(sys.argv[1]), HashCache(Path(sys.argv[2])), skipped=skipped)
print(json.dumps({"files": sorted(e.path for e in entries), "skipped": skipped.examples}))
"""


def readable_code(into: Path) -> Path:
    """The packages the scan imports, copied where nobody (uid 65534) may read them: the
    checkout and its venv may sit in a folder only root may enter (a `mktemp -d`)."""
    code = into / "code"
    # Ours, trio and what trio imports (found, not imported here: they are trio's to declare).
    packages = ("p2pd", "p2pcommon", "trio", "sniffio", "outcome", "attr", "attrs")
    for name in (*packages, "sortedcontainers", "idna"):
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.submodule_search_locations, name
        source = Path(list(spec.submodule_search_locations)[0])
        shutil.copytree(source, code / source.name, ignore=shutil.ignore_patterns("__pycache__"))
    return code


def test_an_unreadable_folder_is_skipped_with_a_reason() -> None:
    # The tests run as root, who reads everything: scan as nobody (uid 65534) instead.
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv")
    with tempfile.TemporaryDirectory(dir="/tmp") as top:
        base = Path(top)
        base.chmod(0o755)
        code = readable_code(base)
        root = base / "share"
        (root / "closed").mkdir(parents=True)
        (root / "open").mkdir()
        (root / "open" / "a.txt").write_bytes(b"a")
        (root / "closed" / "hidden-from-nobody.txt").write_bytes(b"x")
        (root / "unreadable.txt").write_bytes(b"x")
        (root / "closed").chmod(0o700)
        (root / "unreadable.txt").chmod(0o600)
        state = base / "state"
        state.mkdir(mode=0o777)
        state.chmod(0o777)
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            + [sys.executable, "-S", "-c", UNREADABLE_CHILD, str(root), str(state / "c.sqlite3")],
            capture_output=True,
            cwd=base,
            env={**os.environ, "PYTHONPATH": str(code)},
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode()
        found = json.loads(result.stdout)
    assert found["files"] == ["open/a.txt"]
    assert found["skipped"] == {
        "closed": "the folder cannot be read: Permission denied",
        "unreadable.txt": "Permission denied",
    }


# -- faults are reported, not fatal ----------------------------------------------


@pytest.mark.parametrize("breakage", ["a folder in its place", "garbage", "read-only"])
def test_a_broken_hash_cache_is_reported_and_the_scan_goes_on(
    tmp_path: Path, breakage: str
) -> None:
    root = tmp_path / "share"
    root.mkdir()
    (root / "a").write_bytes(b"a")
    db = tmp_path / "cache.sqlite3"
    if breakage == "a folder in its place":
        db.mkdir()
    elif breakage == "garbage":
        db.write_bytes(os.urandom(8192))
    else:
        scan(root, HashCache(db))  # a good cache, which can then only be read
    cache = HashCache(db)
    if breakage == "read-only":
        # Root writes through file modes: a read-only connection stands in for a
        # read-only or full file system (SQLite fails the same way, on writing).
        cache._connect = lambda: sqlite3.connect(f"file:{db}?mode=ro", uri=True)  # type: ignore[method-assign]
    (root / "b").write_bytes(b"b")
    entries = scan(root, cache)
    assert sorted(e.path for e in entries) == ["a", "b"]
    assert cache.error is not None and str(db) in cache.error
    if breakage == "read-only":
        assert "readonly" in cache.error
    # The hashes are still known in memory: a rescan hashes nothing again.
    assert sorted(scan(root, cache), key=lambda e: e.path) == sorted(entries, key=lambda e: e.path)
    if breakage == "garbage":
        # A corrupt cache is set aside, and the next scan writes a new one.
        assert (tmp_path / "cache.sqlite3.corrupt").exists()
        assert cache.error is None
        assert {e.path for e in scan(root, HashCache(db))} == {"a", "b"}


async def test_the_cache_recovers_when_the_cause_goes_away(tmp_path: Path) -> None:
    (tmp_path / "index.sqlite3").mkdir()
    async with running_share(tmp_path, poll_interval=3600, observer_factory=FullInotify) as (
        share,
        root,
    ):
        assert share.warning is not None and "hash cache" in share.warning
        assert share.status()["hash_cache_error"] is not None
        (root / "x").write_bytes(b"x")
        await share.rescan()
        assert share.index.get("x") is not None
        (tmp_path / "index.sqlite3").rmdir()
        await share.rescan()
        assert "hash cache" not in (share.warning or "")
    with contextlib.closing(sqlite3.connect(tmp_path / "index.sqlite3")) as db:
        assert [r[0] for r in db.execute("SELECT path FROM hashes")] == ["x"]


async def test_a_failing_rescan_keeps_the_index_and_the_watcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_share(tmp_path) as (share, root):
        (root / "one").write_bytes(b"1")
        await wait_for(share, "one", sha(b"1"))
        real = scan_module.scan
        calls = 0

        def broken(*args: Any, **kwargs: Any) -> list[FileEntry]:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("disk on fire")
            return real(*args, **kwargs)

        monkeypatch.setattr(share_module, "scan", broken)
        before = failures["rescan"]
        (root / "two").write_bytes(b"2")
        with trio.fail_after(WAIT):
            while failures["rescan"] == before:
                await share.scanned()
        assert share.index.get("one") is not None  # the last good index
        (root / "three").write_bytes(b"3")  # the watcher still runs
        await wait_for(share, "three", sha(b"3"))
        assert share.index.get("two") is not None


async def test_an_unreadable_share_is_a_warning_not_an_end(tmp_path: Path) -> None:
    async with running_share(tmp_path, poll_interval=0.1, observer_factory=FullInotify) as (
        share,
        root,
    ):
        (root / "a").write_bytes(b"a")
        await wait_for(share, "a", sha(b"a"))
        root.rename(tmp_path / "moved-away")
        with trio.fail_after(WAIT):
            while share.scan_error is None:
                await share.scanned()
        assert share.index.get("a") is not None
        assert share.warning is not None and "cannot be read" in share.warning
        (tmp_path / "moved-away").rename(root)
        with trio.fail_after(WAIT):
            while share.scan_error is not None:
                await share.scanned()


# -- a large first scan does not hold readiness ----------------------------------


async def test_started_comes_before_a_long_first_scan_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = 60
    root = tmp_path / "share"
    root.mkdir()
    for i in range(count):
        (root / f"f{i:03}").write_bytes(b"%d" % i)
    real = scan_module._hash_file

    def slow(hasher: Any, fd: int, size: int, check: Any = None) -> Any:
        time.sleep(0.05)
        return real(hasher, fd, size, check)

    monkeypatch.setattr(scan_module, "_hash_file", slow)
    monkeypatch.setattr(scan_module, "BATCH_SECONDS", 0.2)
    share = Share(root, tmp_path, ready_after=0.3, **UNWATCHED)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(2):
            await nursery.start(share.run)
        assert share.indexing
        assert len(share.index) < count
        # Files are published as they are hashed, while the rest is hashed.
        with trio.fail_after(WAIT):
            while not 0 < len(share.index) < count:
                await share.changed()
        assert share.indexing and share.status()["hashed_files"] > 0
        with trio.fail_after(WAIT):
            while share.indexing:
                await share.scanned()
        assert len(share.index) == count
        assert share.progress.hashed == count
        nursery.cancel_scope.cancel()


async def test_a_scan_stopped_at_shutdown_keeps_its_hashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "share"
    root.mkdir()
    for i in range(100):
        (root / f"f{i:03}").write_bytes(b"%d" % i)
    real = scan_module._hash_file

    def slow(hasher: Any, fd: int, size: int, check: Any = None) -> Any:
        time.sleep(0.02)
        return real(hasher, fd, size, check)

    monkeypatch.setattr(scan_module, "_hash_file", slow)
    share = Share(root, tmp_path, ready_after=0.1, **UNWATCHED)
    async with trio.open_nursery() as nursery:
        await nursery.start(share.run)
        await trio.sleep(0.3)  # some files hashed, well before the first timed commit (1 s)
        nursery.cancel_scope.cancel()
    hashed = share.progress.hashed
    assert 0 < hashed < 100
    with contextlib.closing(sqlite3.connect(tmp_path / "index.sqlite3")) as connection:
        (rows,) = connection.execute("SELECT count(*) FROM hashes").fetchone()
    assert rows == hashed


async def test_a_small_share_is_fully_indexed_at_started(tmp_path: Path) -> None:
    root = tmp_path / "share"
    root.mkdir()
    for i in range(10):
        (root / f"f{i}").write_bytes(b"x" * i)
    share = Share(root, tmp_path, **UNWATCHED)
    async with trio.open_nursery() as nursery:
        await nursery.start(share.run)
        assert len(share.index) == 10 and not share.indexing
        nursery.cancel_scope.cancel()


KILLED_CHILD = """
import sys, time
from pathlib import Path
from p2pd.share import scan as scan_module
real = scan_module._hash_file
def slow(*args):
    time.sleep(0.02)
    return real(*args)
scan_module._hash_file = slow
cache = scan_module.HashCache(Path(sys.argv[2]), batch_files=10, batch_seconds=3600)
add = cache.add
def added(*args):
    add(*args)
    print(len(cache._load()), flush=True)
cache.add = added
scan_module.scan(Path(sys.argv[1]), cache)
print("done", flush=True)
"""


def test_a_scan_killed_at_70_percent_keeps_70_percent(tmp_path: Path) -> None:
    count = 200
    root = tmp_path / "share"
    root.mkdir()
    data = {f"f{i:03}": os.urandom(100) for i in range(count)}
    for name, content in data.items():
        (root / name).write_bytes(content)
    db = tmp_path / "cache.sqlite3"
    with subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, str(root), str(db)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[3],
    ) as child:
        try:
            assert child.stdout is not None
            for line in child.stdout:
                if line.strip() == b"140":
                    break
            else:
                pytest.fail("the scan ended before 70 %")
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
    with contextlib.closing(sqlite3.connect(db)) as connection:
        rows = dict(connection.execute("SELECT path, sha256 FROM hashes").fetchall())
    assert 140 <= len(rows) < count
    assert all(rows[path] == sha(data[path]) for path in rows)
    # A restart hashes only the rest.
    hashed: list[str] = []
    real = scan_module._hash_file

    def counting(hasher: Any, fd: int, size: int, check: Any = None) -> Any:
        hashed.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(hasher, fd, size, check)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scan_module, "_hash_file", counting)
        entries = scan(root, HashCache(db))
    assert len(entries) == count and len(hashed) == count - len(rows)
