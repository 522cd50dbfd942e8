"""A file is offered only once it has been stable for ``stable_after`` seconds.

A writer that pauses mid-file must not get half a file listed and hashed:
peers would fetch a truncated file that verifies against the stale hash.
Real files throughout; ages are simulated with os.utime where a test would
otherwise sleep, and the real waits are a fraction of a second.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pcommon.lifecycle import ConfigError
from p2pd.share import scan as scan_module
from p2pd.share.scan import HashCache, scan
from p2pd.share.watching import Share
from tests.p2pd.share.test_share import UNWATCHED, running_share, wait_for
from tests.p2pd.test_config_identity import load, write_config
from tests.support import (
    VENV_BIN,
    RunningPeer,
    daemon_process,
    free_port,
    p2pd_config,
    wait_until,
)

WAIT = 10  # seconds: bounds, never a sleep


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def age(path: Path, seconds: float) -> None:
    """Make ``path`` look last written ``seconds`` ago (negative: in the future)."""
    when = time.time() - seconds
    os.utime(path, (when, when))


# -- the scan holds back fresh files ----------------------------------------------


def test_the_scan_holds_back_a_fresh_file_without_hashing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "share"
    root.mkdir()
    (root / "old.txt").write_bytes(b"old")
    age(root / "old.txt", 120)
    (root / "fresh.txt").write_bytes(b"half of it")
    age(root / "fresh.txt", 20)
    hashed: list[str] = []
    real = scan_module._hash_file

    def counting(hasher: Any, fd: int, size: int, check: Any = None) -> Any:
        hashed.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        return real(hasher, fd, size, check)

    monkeypatch.setattr(scan_module, "_hash_file", counting)
    waiting = scan_module.Waiting(60.0)
    entries = scan(root, HashCache(tmp_path / "c.sqlite3"), waiting=waiting)
    assert [e.path for e in entries] == ["old.txt"]
    assert list(waiting.seen) == ["fresh.txt"] and len(waiting) == 1
    assert hashed == ["old.txt"]
    # To be looked at again once it is 60 s old: in about 40 s.
    assert waiting.delay is not None and 39 < waiting.delay <= 40
    # Without a Waiting (or with 0) every file is offered at once, as before.
    assert sorted(e.path for e in scan(root, HashCache(tmp_path / "c.sqlite3"))) == [
        "fresh.txt",
        "old.txt",
    ]
    assert len(scan(root, HashCache(tmp_path / "d.sqlite3"), waiting=scan_module.Waiting(0))) == 2


def test_a_rewrite_restarts_the_wait(tmp_path: Path) -> None:
    root = tmp_path / "share"
    root.mkdir()
    cache = HashCache(tmp_path / "c.sqlite3")
    path = root / "f"
    path.write_bytes(b"first")
    age(path, 50)
    first = scan_module.Waiting(60.0)
    assert scan(root, cache, waiting=first) == []
    assert first.delay is not None and first.delay <= 10
    path.write_bytes(b"second, longer")  # rewritten while it waits: a fresh mtime
    age(path, 55)  # later than the first version's turn, but only 55 s since this one
    again = scan_module.Waiting(60.0, first.seen)
    assert scan(root, cache, waiting=again) == []
    path.write_bytes(b"third")
    later = scan_module.Waiting(60.0, again.seen)
    assert scan(root, cache, waiting=later) == []
    assert later.delay is not None and later.delay > 59  # the wait starts over
    age(path, 61)
    (entry,) = scan(root, cache, waiting=scan_module.Waiting(60.0, later.seen))
    assert entry.sha256 == sha(b"third")


# -- a running share --------------------------------------------------------------


async def test_a_paused_writer_is_not_served_half_a_file(tmp_path: Path) -> None:
    stable_after = 1.0
    first, second = os.urandom(256 * 1024), os.urandom(256 * 1024)
    async with running_share(tmp_path, stable_after=stable_after) as (share, root):
        with (root / "big.bin").open("wb") as f:
            f.write(first)
            f.flush()
            # The writer pauses: the watcher settles and rescans, and holds the file back.
            with trio.fail_after(WAIT):
                while share.status()["waiting_files"] != 1:
                    await share.scanned()
            assert share.index.get("big.bin") is None
            assert share.status()["waiting_files"] == 1
            await trio.sleep(0.1)
            assert share.index.get("big.bin") is None
            f.write(second)
        written = time.monotonic()
        with trio.fail_after(WAIT):
            while (entry := share.index.get("big.bin")) is None:
                await share.changed()
        # Its first listing (checked at every change) has the full, final hash.
        assert entry.sha256 == sha(first + second)
        assert entry.size == len(first + second)
        assert time.monotonic() - written >= stable_after - 0.05
        assert share.status()["waiting_files"] == 0


async def test_a_waiting_file_appears_without_further_events(tmp_path: Path) -> None:
    # Neither watched nor polled: only the rescan the share schedules can list it.
    async with running_share(tmp_path, stable_after=0.3, **UNWATCHED) as (share, root):
        (root / "new.txt").write_bytes(b"complete")
        await share.rescan()
        assert share.index.get("new.txt") is None
        assert share.status()["waiting_files"] == 1
        await wait_for(share, "new.txt", sha(b"complete"))
        assert share.status()["waiting_files"] == 0


async def test_a_rewrite_while_waiting_restarts_the_wait(tmp_path: Path) -> None:
    stable_after = 1.0
    async with running_share(tmp_path, stable_after=stable_after, **UNWATCHED) as (share, root):
        path = root / "doc.txt"
        path.write_bytes(b"draft")
        age(path, stable_after - 0.2)  # the draft would be stable in 0.2 s
        await share.rescan()
        assert share.status()["waiting_files"] == 1
        path.write_bytes(b"final version")  # rewritten: a fresh mtime
        rewritten = time.monotonic()
        with trio.fail_after(WAIT):
            await share.scanned()  # the rescan scheduled for the draft
        assert time.monotonic() - rewritten < stable_after - 0.3
        assert share.index.get("doc.txt") is None
        assert share.status()["waiting_files"] == 1
        await wait_for(share, "doc.txt", sha(b"final version"))
        assert time.monotonic() - rewritten >= stable_after - 0.05


async def test_the_first_scan_lists_old_files_at_once(tmp_path: Path) -> None:
    root = tmp_path / "share"
    root.mkdir()
    for i in range(5):
        (root / f"old{i}").write_bytes(b"%d" % i)
        age(root / f"old{i}", 3600)
    (root / "fresh").write_bytes(b"just written")
    share = Share(root, tmp_path, stable_after=0.5, **UNWATCHED)
    async with trio.open_nursery() as nursery:
        await nursery.start(share.run)
        assert sorted(e.path for e in share.index.listing()) == [f"old{i}" for i in range(5)]
        assert share.status()["waiting_files"] == 1
        await wait_for(share, "fresh", sha(b"just written"))
        assert len(share.index) == 6
        nursery.cancel_scope.cancel()


async def test_a_file_dated_in_the_future_is_offered_once_it_stays_unchanged(
    tmp_path: Path,
) -> None:
    # Its age by the wall clock is negative; seen unchanged for stable_after, it is stable.
    async with running_share(tmp_path, stable_after=0.3, **UNWATCHED) as (share, root):
        (root / "skewed").write_bytes(b"from a fast clock")
        age(root / "skewed", -3600)
        await share.rescan()
        assert share.index.get("skewed") is None
        await wait_for(share, "skewed", sha(b"from a fast clock"))


async def test_stable_after_zero_offers_at_once(tmp_path: Path) -> None:
    async with running_share(tmp_path, stable_after=0, **UNWATCHED) as (share, root):
        (root / "x").write_bytes(b"x")
        await share.rescan()
        assert share.index.get("x") is not None
        assert share.status()["waiting_files"] == 0


# -- configuration ----------------------------------------------------------------


def test_stable_after_defaults_to_two_seconds(tmp_path: Path) -> None:
    assert load(write_config(tmp_path)).stable_after == 2.0
    assert load(write_config(tmp_path, "stable_after = 0\n")).stable_after == 0
    assert load(write_config(tmp_path, "stable_after = 0.5\n")).stable_after == 0.5


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("-1", "greater than or equal to 0"),
        ("'soon'", "valid number"),
        ("1e9", "less than or equal to 3600"),
        ("nan", "less than or equal to 3600"),
    ],
)
def test_a_bad_stable_after_names_the_key(tmp_path: Path, value: str, why: str) -> None:
    path = write_config(tmp_path, f"stable_after = {value}\n")
    with pytest.raises(ConfigError, match=f"^{path}: key 'stable_after': .*{why}") as caught:
        load(path)
    assert "unknown" not in str(caught.value)


def test_stable_after_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P2PD_STABLE_AFTER", "7.5")
    assert load(write_config(tmp_path)).stable_after == 7.5


# -- the real daemon with the real default ------------------------------------------


async def test_the_daemon_holds_back_a_fresh_file_by_default(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # no registry needed to see what is shared
    port = free_port()
    config, share, downloads, state, socket_path = p2pd_config(tmp_path, "solo", [dead], port)
    # The tests' configuration offers files at once; this daemon runs with the default.
    text = config.read_text()
    assert "stable_after = 0\n" in text
    config.write_text(text.replace("stable_after = 0\n", ""))
    (share / "old.txt").write_bytes(b"there before")
    age(share / "old.txt", 3600)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("P2PD_", "NOTIFY_"))}
    command = [str(VENV_BIN / "p2pd"), "--config", str(config)]
    log_path = tmp_path / "solo.log"
    with daemon_process(command, env, log_path, ready_timeout=60) as (process, notify):
        peer = RunningPeer(
            "solo", process, log_path, notify, socket_path, share, downloads, state, config, port
        )

        async def shared() -> dict[str, str]:
            return {e["path"]: e["sha256"] for e in await peer.actl_json("shared")}

        assert await shared() == {"old.txt": sha(b"there before")}  # listed at once
        # A slow writer: a chunk at a time, with pauses longer than the watcher's settling.
        data, held = b"", False
        for i in range(4):
            with (share / "new.bin").open("ab") as f:
                f.write(b"chunk %d\n" % i)
            data += b"chunk %d\n" % i
            await trio.sleep(0.4)
            held = held or (await peer.actl_json("status"))["waiting_files"] == 1
            assert "new.bin" not in await shared()
        written = (share / "new.bin").stat().st_mtime
        assert held

        async def listed() -> bool:
            return "new.bin" in await shared()

        await wait_until(listed, what="the file to be offered once stable")
        assert time.time() - written >= 2.0  # the default
        assert (await shared())["new.bin"] == sha(data)
        status = await peer.actl_json("status")
        assert status["waiting_files"] == 0 and status["shared_files"] == 2
