"""Fetching between two real p2pd: verified, atomic, never overwriting, recorded."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.p2pd.fetch.test_resume import members
from tests.p2pd.test_e2e import FAST, Network, meet
from tests.support import run_p2pd, run_registryd

NAMES = ["empty", "docs/deep/nested.bin", "Grüße – ☃.txt", "big.bin"]


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    with run_registryd(tmp_path, {"REGISTRYD_PEER_TTL": "3"}) as registry:
        share = tmp_path / "bob" / "share"
        (share / "docs" / "deep").mkdir(parents=True)
        (share / "empty").write_bytes(b"")
        (share / "docs" / "deep" / "nested.bin").write_bytes(os.urandom(200_000))
        (share / "Grüße – ☃.txt").write_text("non-ASCII\n")
        (share / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024 + 7))
        (share / "docs" / "copy.bin").write_bytes((share / "docs/deep/nested.bin").read_bytes())
        urls = [registry.url]
        with (
            run_p2pd(tmp_path, "alice", urls, extra_config=FAST) as alice,
            run_p2pd(tmp_path, "bob", urls, extra_config=FAST) as bob,
        ):
            yield Network(registry, alice, bob)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_fetch_lands_verified_at_the_relative_path(network: Network) -> None:
    alice, bob = network.alice, network.bob
    await meet(alice, bob)
    bob_id = (await bob.actl_json("status"))["id"]
    for name in NAMES:
        outcome: dict[str, Any] = await alice.actl_json("fetch", "bob", name)
        landed = alice.download_dir / name
        assert outcome["status"] == "ok", outcome
        assert outcome["path"] == str(landed)
        assert outcome["remote_path"] == name
        assert outcome["peer_id"] == bob_id
        assert outcome["sha256"] == digest(bob.share_dir / name) == digest(landed)
        assert outcome["size"] == landed.stat().st_size
        assert outcome["error"] is None
    leftovers = [p.name for p in alice.download_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    history = await alice.actl_json("history")
    assert {h["remote_path"] for h in history} == set(NAMES)
    assert {h["status"] for h in history} == {"ok"}
    assert {
        "path",
        "peer_id",
        "peer_name",
        "sha256",
        "size",
        "status",
        "error",
        "finished_at",
    } <= set(history[0])


async def test_existing_names_are_never_overwritten(network: Network) -> None:
    alice, bob = network.alice, network.bob
    await meet(alice, bob)
    taken = alice.download_dir / "Grüße – ☃.txt"
    taken.write_text("mine, different")
    outcome = await alice.actl_json("fetch", "bob", "Grüße – ☃.txt")
    assert outcome["status"] == "ok"
    assert outcome["path"] == str(alice.download_dir / "Grüße – ☃ (1).txt")
    assert taken.read_text() == "mine, different"
    # The same content already present: done at once, nothing new on disk.
    again = await alice.actl_json("fetch", "bob", "Grüße – ☃.txt")
    assert again["status"] == "ok"
    assert again["path"] == outcome["path"]
    assert sorted(p.name for p in alice.download_dir.iterdir()) == [
        "Grüße – ☃ (1).txt",
        "Grüße – ☃.txt",
    ]


async def test_unknown_file_and_detach(network: Network) -> None:
    alice, bob = network.alice, network.bob
    await meet(alice, bob)
    missing = alice.ctl("fetch", "bob", "nope.txt")
    assert missing.returncode == 1
    assert "does not share 'nope.txt'" in missing.stderr
    detached = await alice.actl_json("fetch", "--detach", "bob", "big.bin")
    assert set(detached) == {"id"}
    human = alice.ctl("history")
    assert human.returncode == 0


async def test_history_survives_a_restart(network: Network, tmp_path: Path) -> None:
    alice, bob = network.alice, network.bob
    await meet(alice, bob)
    await alice.actl_json("fetch", "bob", "empty")
    assert alice.stop() == 0
    with run_p2pd(tmp_path, "alice", [network.registry.url], extra_config=FAST) as again:
        history = await again.actl_json("history")
        assert [h["remote_path"] for h in history] == ["empty"]


async def test_a_whole_folder(network: Network) -> None:
    alice, bob = network.alice, network.bob
    await meet(alice, bob)
    # Two files with the same bytes: they share a partial file, one after the other.
    outcomes = await alice.actl_json("fetch", "bob", "docs/")
    assert sorted(o["remote_path"] for o in outcomes) == ["docs/copy.bin", "docs/deep/nested.bin"]
    assert {o["status"] for o in outcomes} == {"ok"}
    original = digest(bob.share_dir / "docs" / "deep" / "nested.bin")
    assert digest(alice.download_dir / "docs" / "deep" / "nested.bin") == original
    assert digest(alice.download_dir / "docs" / "copy.bin") == original


async def test_a_taken_long_name_lands_under_a_shortened_free_name(tmp_path: Path) -> None:
    name = "Grüße " + "x" * 242 + ".txt"  # 254 bytes: "name (1).txt" would be 258
    share = tmp_path / "bob" / "share"
    share.mkdir(parents=True)
    (share / name).write_text("theirs")
    async with members(tmp_path, bob=FAST, alice=FAST) as peers:
        alice = peers["alice"]
        (alice.download_dir / name).write_text("mine")
        outcome = await alice.actl_json("fetch", "bob", name)
        assert outcome["status"] == "ok", outcome
        landed = Path(outcome["path"])
        assert landed.parent == alice.download_dir
        assert landed.name == "Grüße " + "x" * 239 + " (1).txt"
        assert len(landed.name.encode()) == 255
        assert (alice.download_dir / landed.name).read_text() == "theirs"
        assert (alice.download_dir / name).read_text() == "mine"
