"""Disk faults end the affected transfer with the reason, never the daemon, and heal.

A real tmpfs is mounted for download_dir (then remounted read-only, as the
kernel does to a failing disk) or for state_dir (then filled up).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests.p2pd.fetch.test_resume import SIZE, members, share_big
from tests.p2pd.test_e2e import FAST
from tests.support import wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@asynccontextmanager
async def tmpfs(folder: Path, size: str = "128m") -> AsyncIterator[Path]:
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    await trio.Path(folder).mkdir(parents=True, exist_ok=True)
    mounted = await trio.run_process(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=False
    )
    if mounted.returncode != 0:
        pytest.skip("this machine refuses to mount a tmpfs (no CAP_SYS_ADMIN in this sandbox)")
    try:
        yield folder
    finally:
        await trio.run_process(["umount", "-l", str(folder)], check=False)


async def remount(folder: Path, mode: str) -> None:
    await trio.run_process(["mount", "-o", f"remount,{mode}", str(folder)])


async def test_a_read_only_download_dir_fails_the_transfer_and_heals(tmp_path: Path) -> None:
    data = os.urandom(SIZE)
    share_big(tmp_path, "bob", data)
    async with (
        tmpfs(tmp_path / "alice" / "downloads") as downloads,
        members(tmp_path, bob=FAST, alice=FAST) as peers,
    ):
        alice = peers["alice"]
        # A file system the kernel remounted read-only (it refuses while files
        # are open for writing, so before the transfer opens its partial file).
        await remount(downloads, "ro")
        result = alice.ctl("--json", "fetch", "bob", "big.bin")
        assert result.returncode == 1
        outcome = json.loads(result.stdout)
        assert outcome["status"] == "failed"
        assert "read-only" in outcome["error"], outcome
        assert alice.process.poll() is None, "p2pd ended on a read-only download_dir"
        assert (await alice.actl_json("status"))["name"] == "alice"
        (recorded,) = await alice.actl_json("history")
        assert recorded["status"] == "failed" and "read-only" in recorded["error"]
        # The cause goes away: the same fetch works, with nothing else to do.
        await remount(downloads, "rw")
        again = await alice.actl_json("fetch", "bob", "big.bin")
        assert again["status"] == "ok", again
        assert hashlib.sha256((downloads / "big.bin").read_bytes()).digest() == (
            hashlib.sha256(data).digest()
        )


async def test_a_full_state_dir_keeps_transfers_going_and_says_why(tmp_path: Path) -> None:
    share = tmp_path / "bob" / "share"
    share.mkdir(parents=True)
    (share / "one.txt").write_bytes(b"one")
    (share / "two.txt").write_bytes(b"two")
    async with (
        tmpfs(tmp_path / "alice" / "state", "8m") as state,
        members(tmp_path, bob=FAST, alice=FAST) as peers,
    ):
        alice = peers["alice"]
        filler = state / "filler"
        await trio.to_thread.run_sync(fill, filler)
        first = await alice.actl_json("fetch", "bob", "one.txt")
        assert first["status"] == "ok", first
        status = await alice.actl_json("status")
        assert status["history_error"] and "full" in status["history_error"], status
        # What could not be written is still shown.
        assert [o["remote_path"] for o in await alice.actl_json("history")] == ["one.txt"]
        await trio.Path(filler).unlink()
        second = await alice.actl_json("fetch", "bob", "two.txt")
        assert second["status"] == "ok", second

        async def healed() -> bool:
            return (await alice.actl_json("status"))["history_error"] is None

        await wait_until(healed, what="the history to be writable again")
        assert {o["remote_path"] for o in await alice.actl_json("history")} >= {"two.txt"}
        assert alice.process.poll() is None


def fill(path: Path) -> None:
    """Write until the file system is full, down to its last block."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1024 * 1024, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
