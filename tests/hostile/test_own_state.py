"""p2pd's own state files, damaged by hand: read back as strictly as what a member sends.

One bad row of the hash cache, the queue or the history must cost that row
only (dropped, with one warning), never the daemon, its start, or the
listing every member relies on (docs/protocol.md §8).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from p2pd.share.merkle import merkle_root, verify_piece_layer
from tests.hostile.attacker import Attacker, Closed, assert_serving, peer_get, poll, register
from tests.support import VENV_BIN, RunningRegistry, run_p2pd, run_registryd

FAST = "heartbeat_interval = 0.5\n"
LISTED_SHA256 = re.compile(r"[0-9a-f]{64}")
FILES = {"a.txt": b"alpha\n", "docs/b.txt": b"beta\n", "c.bin": bytes(range(256))}


@dataclass
class Scene:
    base: Path
    registry: RunningRegistry
    member: Attacker


@pytest.fixture(scope="module")
def scene(module_dir: Path) -> Iterator[Scene]:
    with run_registryd(module_dir, {"REGISTRYD_PEER_TTL": "600"}) as registry:
        member = Attacker.new(module_dir / "member")
        assert register(registry.url, member, "mallory", 9).status == 200
        yield Scene(module_dir, registry, member)


def listed(port: int, member: Attacker) -> dict[str, str]:
    """path → sha256 of the listing, as a member gets it (once it is admitted)."""

    def admitted() -> bool:
        try:
            return peer_get(port, member, "/files").status == 200
        except (Closed, OSError):
            return False

    poll(admitted, timeout=30, what="the peer to admit the member", every=0.25)
    answer = peer_get(port, member, "/files")
    files = answer.json()["files"]
    for entry in files:  # every root the real one (BEP 52), of the file's real bytes
        root = merkle_root(FILES[entry["path"]])
        assert entry.get("root") == (root.hex() if root is not None else None), entry
    return {entry["path"]: entry["sha256"] for entry in files}


def damage(db: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    with sqlite3.connect(db) as connection:
        for sql, values in statements:
            connection.execute(sql, values)
    connection.close()


def test_a_damaged_hash_cache_row_is_hashed_again_not_listed(scene: Scene) -> None:
    name = "hashes"
    share = scene.base / name / "share"
    for path, data in FILES.items():
        (share / path).parent.mkdir(parents=True, exist_ok=True)
        (share / path).write_bytes(data)
    truth = {path: hashlib.sha256(data).hexdigest() for path, data in FILES.items()}
    urls = [scene.registry.url]
    with run_p2pd(scene.base, name, urls, extra_config=FAST) as peer:
        assert listed(peer.port, scene.member) == truth
    db = peer.state_dir / "index.sqlite3"
    damage(
        db,
        # The case: one upper-cased sha256 (same length, so it looked fine).
        ("UPDATE hashes SET sha256 = upper(sha256) WHERE path = ?", ("a.txt",)),
        # Not text at all.
        ("UPDATE hashes SET sha256 = ? WHERE path = ?", (b"\x00" * 32, "docs/b.txt")),
        # A row for a path no scan ever writes.
        (
            "INSERT INTO hashes (path, size, mtime_ns, inode, sha256) VALUES (?, 1, 1, 1, ?)",
            ("../escape", "0" * 64),
        ),
        # A pieces root that is not one (the listing would carry it to every member).
        ("UPDATE hashes SET root = ? WHERE path = ?", ("not a root", "c.bin")),
    )
    with run_p2pd(scene.base, name, urls, extra_config=FAST) as peer:
        got = listed(peer.port, scene.member)
        assert got == truth  # every entry valid, and each the file's real hash
        assert all(LISTED_SHA256.fullmatch(sha) for sha in got.values())
        log = peer.log()
        warnings = [line for line in log.splitlines() if "damaged row" in line]
        assert len(warnings) == 1, log[-3000:]
        assert "4 damaged rows" in warnings[0] and "hashed again" in warnings[0]
        assert_serving(peer.process, peer.socket_path, log)
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT path, sha256 FROM hashes ORDER BY path").fetchall()
    connection.close()
    assert dict(rows) == truth  # the bad rows are gone from the file, the good ones back


def test_a_damaged_piece_layer_is_never_served_and_the_file_is_hashed_again(
    scene: Scene,
) -> None:
    name = "layers"
    share = scene.base / name / "share"
    share.mkdir(parents=True)
    data = os.urandom(100_000)  # seven pieces of 16 KiB
    (share / "big.bin").write_bytes(data)
    root = merkle_root(data)
    assert root is not None
    urls = [scene.registry.url]
    with run_p2pd(scene.base, name, urls, extra_config=FAST) as peer:
        listed_entry: dict[str, Any] = {}

        def indexed() -> bool:
            try:
                answer = peer_get(peer.port, scene.member, "/files")
            except (Closed, OSError):
                return False
            files = answer.json()["files"] if answer.status == 200 else []
            listed_entry.update(files[0] if files else {})
            return bool(files)

        poll(indexed, timeout=30, what="the file to be listed", every=0.25)
        assert listed_entry["root"] == root.hex() and listed_entry["piece_size"] == 16384
        good = peer_get(peer.port, scene.member, "/layers/big.bin")
        assert good.status == 200 and len(good.body) == 7 * 32
        assert verify_piece_layer(good.body, root, len(data), 16384)
    damage(
        db := peer.state_dir / "index.sqlite3",
        ("UPDATE hashes SET layer = ? WHERE path = ?", (bytes(7 * 32), "big.bin")),
    )
    with run_p2pd(scene.base, name, urls, extra_config=FAST) as peer:
        poll(indexed, timeout=30, what="the file to be listed", every=0.25)
        first = peer_get(peer.port, scene.member, "/layers/big.bin")
        assert first.status == 503  # not the damaged layer: the file is hashed again

        def healed() -> bool:
            answer = peer_get(peer.port, scene.member, "/layers/big.bin")
            return answer.status == 200 and verify_piece_layer(answer.body, root, len(data), 16384)

        poll(healed, timeout=30, what="the layer to be hashed again", every=0.25)
        assert "bad piece layer for 'big.bin'" in peer.log()
    with sqlite3.connect(db) as connection:
        (layer,) = connection.execute("SELECT layer FROM hashes").fetchone()
    connection.close()
    assert verify_piece_layer(layer, root, len(data), 16384)


def test_damaged_queue_and_history_rows_cost_only_themselves(scene: Scene) -> None:
    name = "history"
    urls = [scene.registry.url]
    with run_p2pd(scene.base, name, urls, extra_config=FAST) as peer:
        pass  # creates history.sqlite3 with its tables
    db = peer.state_dir / "history.sqlite3"
    sources = json.dumps([{"id": "b" * 52, "name": "bob", "bytes": 3, "bad_pieces": 0,
                           "wasted_bytes": 0, "liar": False}])  # fmt: skip
    good = (
        "00000001", "/d/a.txt", "a.txt", "b" * 52, "bob", "c" * 64, 3, "ok", None, 1, 2, 3, 0,
        sources,
    )  # fmt: skip
    queue = (
        "INSERT INTO queue (id, peer_id, peer_name, remote_path, sha256, size, started_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
    history = "INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    damage(
        db,
        (history, good),
        # A path that is not text, a status nobody writes, a time that is not a number.
        (history, ("00000002", b"\xff/x", *good[2:])),
        (history, ("00000003", *good[1:7], "exploded", *good[8:])),
        (history, ("00000004", *good[1:10], "soon", *good[11:])),
        # Text that is not UTF-8: sqlite3 would fail the whole read on it.
        (
            "INSERT INTO history SELECT '00000005', path, remote_path, peer_id, "
            "CAST(? AS TEXT), sha256, size, status, error, started_at, finished_at, "
            "bytes_per_second, already_there, sources FROM history WHERE id = '00000001'",
            (b"bob\xff",),
        ),
        # Sources that are not what p2pd writes: not JSON, a liar that is not a bool.
        (history, ("00000006", *good[1:13], "[{not json")),
        (history, ("00000007", *good[1:13], sources.replace("false", '"no"'))),
        # Queued transfers that cannot even be read as one: at start they would be resumed.
        (queue, ("0000000a", "p" * 52, "bob", b"\x00not-text", "c" * 64, 3, 1.0)),
        (queue, ("0000000b", "p" * 52, "bob", "a.txt", "c" * 64, "three", 1.0)),
        (queue, ("0000000c", None, None, None, None, None, None)),
    )
    with run_p2pd(scene.base, name, urls, extra_config=FAST) as peer:
        assert_serving(peer.process, peer.socket_path, peer.log())
        outcomes = peer.ctl_json("history")
        assert [o["id"] for o in outcomes] == ["00000001"]
        status = peer.ctl_json("status")
        assert status["history_error"] is None
        assert peer.ctl_json("downloads") == []
        peer.ctl_json("history")  # asked again: the damaged records are not logged again
        log = peer.log()
        assert log.count("3 damaged queued transfers") == 1, log[-3000:]
        assert log.count("6 damaged history records") == 1, log[-3000:]
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT count(*) FROM queue").fetchone() == (0,)
        assert connection.execute("SELECT count(*) FROM history").fetchone() == (7,)
    connection.close()
    assert json.dumps(outcomes)  # what p2pctl printed is plain JSON


@pytest.mark.parametrize("command", ["p2pd", "registryd", "p2pctl doctor"])
def test_a_config_file_that_is_not_utf8(command: str, tmp_path: Path) -> None:
    """A config saved as Latin-1: the README promises exit 2 and the problem named."""
    config = tmp_path / "latin1.toml"
    config.write_bytes('name = "café"\n'.encode("latin-1"))
    program, *rest = command.split()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("P2PD_", "REGISTRYD_"))}
    result = subprocess.run(
        [str(VENV_BIN / program), *rest, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    said = result.stdout + result.stderr
    assert "Traceback" not in said
    assert f"{config} is not UTF-8 text (byte 0xe9 at offset 11" in said
    # The daemons: a configuration error; doctor: a problem it found (docs/protocol.md §7).
    assert result.returncode == (1 if program == "p2pctl" else 2), said
    if program != "p2pctl":
        assert said.startswith(f"{program}: configuration error: ")
