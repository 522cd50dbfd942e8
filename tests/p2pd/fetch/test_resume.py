"""Robust transfers: resume after a killed daemon, another source, cancel, disk full."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.p2pd.test_e2e import FAST, meet
from tests.support import RunningPeer, run_p2pd, run_registryd, wait_until

SIZE = 48 * 1024 * 1024
# Slow enough to kill a transfer in the middle, fast enough for a test.
THROTTLE = FAST + f"upload_rate_limit = {12 * 1024 * 1024}\n"


def share_big(root: Path, name: str, data: bytes) -> None:
    share = root / name / "share"
    share.mkdir(parents=True)
    (share / "big.bin").write_bytes(data)


@asynccontextmanager
async def members(tmp_path: Path, **configs: str) -> AsyncIterator[dict[str, RunningPeer]]:
    """A registry and one p2pd per keyword (name=extra config), started in order, met."""
    with run_registryd(tmp_path, {"REGISTRYD_PEER_TTL": "3"}) as registry, ExitStack() as stack:
        peers = {
            name: stack.enter_context(run_p2pd(tmp_path, name, [registry.url], extra_config=extra))
            for name, extra in configs.items()
        }
        await meet(*peers.values())
        yield peers


async def progress_of(peer: RunningPeer, transfer_id: str) -> int:
    for transfer in await peer.actl_json("downloads"):
        if transfer["id"] == transfer_id:
            return int(transfer["bytes_done"])
    return -1


async def wait_for_bytes(peer: RunningPeer, transfer_id: str, at_least: int) -> None:
    async def far_enough() -> bool:
        return await progress_of(peer, transfer_id) >= at_least

    await wait_until(far_enough, what=f"transfer {transfer_id} to pass {at_least} bytes")


async def outcome_of(peer: RunningPeer, transfer_id: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def finished() -> bool:
        for outcome in await peer.actl_json("history"):
            if outcome["id"] == transfer_id:
                found.update(outcome)
                return True
        return False

    await wait_until(finished, what=f"transfer {transfer_id} to finish")
    return found


async def killed_mid_transfer(
    tmp_path: Path, urls: list[str], bob: RunningPeer, at: int, sig: int = signal.SIGKILL
) -> str:
    """Start alice, fetch bob's big.bin detached, stop alice with ``sig`` after ``at``
    bytes: the id.  SIGTERM must stop it at once, mid-body (worker threads included)."""
    with run_p2pd(tmp_path, "alice", urls, extra_config=FAST) as alice:
        await meet(alice, bob)
        started = await alice.actl_json("fetch", "--detach", "bob", "big.bin")
        await wait_for_bytes(alice, started["id"], at)
        asked = time.monotonic()
        code = alice.stop(sig)
        if sig == signal.SIGTERM:
            assert code == 0 and time.monotonic() - asked < 5, (code, alice.log()[-2000:])
        partials = [p for p in alice.download_dir.iterdir() if p.name.startswith(".")]
        assert len(partials) == 1 and not (alice.download_dir / "big.bin").exists()
    return str(started["id"])


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
async def test_resume_after_the_downloader_is_killed(tmp_path: Path, sig: int) -> None:
    data = os.urandom(SIZE)
    share_big(tmp_path, "bob", data)
    with run_registryd(tmp_path, {"REGISTRYD_PEER_TTL": "3"}) as registry:
        urls = [registry.url]
        with run_p2pd(tmp_path, "bob", urls, extra_config=THROTTLE) as bob:
            transfer_id = await killed_mid_transfer(tmp_path, urls, bob, int(SIZE * 0.6), sig)
            with run_p2pd(tmp_path, "alice", urls, extra_config=FAST) as alice:
                outcome = await outcome_of(alice, transfer_id)
                assert outcome["status"] == "ok", outcome
                assert (alice.download_dir / "big.bin").read_bytes() == data
                served = (await bob.actl_json("status"))["served_bytes"]
                # From scratch it would have been more than 1.6 x SIZE.
                assert served < 1.5 * SIZE


async def test_another_member_with_the_same_bytes_takes_over(tmp_path: Path) -> None:
    data = os.urandom(SIZE)
    share_big(tmp_path, "bob", data)
    share_big(tmp_path, "carol", data)
    async with members(tmp_path, carol=THROTTLE, bob=THROTTLE, alice=FAST) as peers:
        alice, bob, carol = peers["alice"], peers["bob"], peers["carol"]
        started = await alice.actl_json("fetch", "--detach", "bob", "big.bin")
        await wait_for_bytes(alice, started["id"], int(SIZE * 0.5))
        bob.stop(signal.SIGKILL)
        outcome = await outcome_of(alice, started["id"])
        assert outcome["status"] == "ok", outcome
        assert outcome["peer_id"] == (await carol.actl_json("status"))["id"]
        assert (alice.download_dir / "big.bin").read_bytes() == data
        assert (await carol.actl_json("status"))["served_bytes"] < 0.6 * SIZE


async def test_cancel_removes_the_partial_and_records_it(tmp_path: Path) -> None:
    share_big(tmp_path, "bob", os.urandom(SIZE))
    async with members(tmp_path, bob=THROTTLE, alice=FAST) as peers:
        alice = peers["alice"]
        started = await alice.actl_json("fetch", "--detach", "bob", "big.bin")
        await wait_for_bytes(alice, started["id"], 1)
        cancelled = await alice.actl_json("cancel", started["id"])
        assert cancelled == {"id": started["id"], "cancelled": True}
        outcome = await outcome_of(alice, started["id"])
        assert outcome["status"] == "cancelled"
        assert list(alice.download_dir.iterdir()) == []
        assert alice.ctl("cancel", "nothing").returncode == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
async def test_disk_full_fails_cleanly(tmp_path: Path) -> None:
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    share_big(tmp_path, "bob", os.urandom(8 * 1024 * 1024))
    small = tmp_path / "alice" / "downloads"
    small.mkdir(parents=True)
    mounted = await trio.run_process(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=False
    )
    if mounted.returncode != 0:
        pytest.skip("this machine refuses to mount a tmpfs (no CAP_SYS_ADMIN in this sandbox)")
    try:
        async with members(tmp_path, bob=FAST, alice=FAST) as peers:
            alice = peers["alice"]
            result = alice.ctl("--json", "fetch", "bob", "big.bin")
            assert result.returncode == 1
            assert "disk full" in result.stderr
            assert list(small.iterdir()) == []
            (outcome,) = await alice.actl_json("history")
            assert outcome["status"] == "failed" and "disk full" in outcome["error"]
    finally:
        await trio.run_process(["umount", "-l", str(small)], check=False)


async def test_a_file_changed_at_the_source_fails_with_the_reason(tmp_path: Path) -> None:
    share_big(tmp_path, "bob", os.urandom(SIZE))
    with run_registryd(tmp_path, {"REGISTRYD_PEER_TTL": "3"}) as registry:
        urls = [registry.url]
        with run_p2pd(tmp_path, "bob", urls, extra_config=THROTTLE) as bob:
            transfer_id = await killed_mid_transfer(tmp_path, urls, bob, 1)
            replacement = bob.share_dir / ".big.new"
            replacement.write_bytes(os.urandom(SIZE))
            replacement.rename(bob.share_dir / "big.bin")
            with run_p2pd(tmp_path, "alice", urls, extra_config=FAST) as alice:
                outcome = await outcome_of(alice, transfer_id)
                assert outcome["status"] == "failed"
                assert "changed since it was listed" in outcome["error"]
                assert list(alice.download_dir.iterdir()) == []
