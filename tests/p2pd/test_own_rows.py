"""Rows of p2pd's own SQLite files read back as strictly as a member's listing.

A damaged row costs that row only: dropped with one warning (the hash cache
hashes its file again; the queue resumes the others; `history` shows the
others), never a whole read, a listing every member refuses, or a start.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest

from p2pd.fetch.history import HistoryFile
from p2pd.fetch.model import Outcome, Queued
from p2pd.share.hashcache import FileKey, HashCache
from p2pd.share.hashing import Hashed

SHA = "ab" * 32
KEY = FileKey(3, 1_700_000_000_000_000_000, 42)
HASHED = Hashed(SHA, "cd" * 32, 16384)


def rows(db: Path, sql: str, values: list[tuple[object, ...]]) -> None:
    with sqlite3.connect(db) as connection:
        connection.executemany(sql, values)
    connection.close()


def test_damaged_hash_cache_rows_are_dropped_once_and_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "index.sqlite3"
    cache = HashCache(db)
    cache.store(
        [("good.txt", KEY, HASHED, b""), ("upper.txt", KEY, HASHED, b"")],
        {"good.txt", "upper.txt"},
    )
    rows(
        db,
        "INSERT OR REPLACE INTO hashes (path, size, mtime_ns, inode, sha256) "
        "VALUES (?, ?, ?, ?, ?)",
        [
            ("upper.txt", 3, KEY.mtime_ns, 42, SHA.upper()),
            ("short.txt", 3, KEY.mtime_ns, 42, "ab"),
            ("blob.txt", 3, KEY.mtime_ns, 42, bytes(32)),
            ("size.txt", "three", KEY.mtime_ns, 42, SHA),
            ("negative.txt", -1, KEY.mtime_ns, 42, SHA),
            ("../out.txt", 3, KEY.mtime_ns, 42, SHA),
            (b"\xff.txt", 3, KEY.mtime_ns, 42, SHA),
        ],
    )
    with caplog.at_level(logging.WARNING, "p2pd.share"):
        again = HashCache(db)
        assert again.lookup("good.txt", KEY) == HASHED
        for path in ("upper.txt", "short.txt", "blob.txt", "size.txt", "negative.txt"):
            assert again.lookup(path, KEY) is None  # hashed again by the scan
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "7 damaged rows" in warning and "'upper.txt': sha256" in warning
    assert again.error is None
    with sqlite3.connect(db) as connection:
        left = connection.execute("SELECT path FROM hashes").fetchall()
    connection.close()
    assert left == [("good.txt",)]


def test_damaged_piece_columns_are_dropped_and_older_rows_hashed_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "index.sqlite3"
    big = FileKey(40_000, KEY.mtime_ns, 43)  # three pieces of 16 KiB: a layer of 96 bytes
    layer = bytes(96)
    HashCache(db).store(
        [("good.txt", KEY, HASHED, b""), ("big.bin", big, Hashed(SHA, "cd" * 32, 16384), layer)],
        {"good.txt", "big.bin"},
    )
    columns = "path, size, mtime_ns, inode, sha256, root, piece_size, layer"
    rows(
        db,
        f"INSERT OR REPLACE INTO hashes ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            ("older.txt", 3, KEY.mtime_ns, 42, SHA, None, None, None),
            ("upper-root.txt", 3, KEY.mtime_ns, 42, SHA, ("cd" * 32).upper(), 16384, b""),
            ("piece.txt", 3, KEY.mtime_ns, 42, SHA, "cd" * 32, 32768, b""),
            ("empty.txt", 0, KEY.mtime_ns, 42, SHA, "cd" * 32, 16384, b""),
            ("no-root.txt", 3, KEY.mtime_ns, 42, SHA, None, 16384, b""),
            ("short-layer.bin", 40_000, KEY.mtime_ns, 42, SHA, "cd" * 32, 16384, bytes(64)),
        ],
    )
    with caplog.at_level(logging.INFO, "p2pd.share"):
        again = HashCache(db)
        assert again.lookup("good.txt", KEY) == HASHED
        assert again.lookup("older.txt", KEY) is None  # hashed again, once
        for path in ("upper-root.txt", "piece.txt", "no-root.txt"):
            assert again.lookup(path, KEY) is None
        # The layer is checked against the root when a member asks for it: this one
        # does not fold up to it, so it is dropped and its file hashed again.
        assert again.layer("big.bin", big, Hashed(SHA, "cd" * 32, 16384)) is None
        assert again.lookup("big.bin", big) is None
    messages = [r.getMessage() for r in caplog.records]
    assert any("1 files of the hash cache" in m and "hashed again once" in m for m in messages)
    assert any("5 damaged rows" in m for m in messages)
    assert any("bad piece layer for 'big.bin'" in m for m in messages)
    with sqlite3.connect(db) as connection:
        left = sorted(connection.execute("SELECT path FROM hashes").fetchall())
    connection.close()
    assert left == [("good.txt",), ("older.txt",)]


def test_damaged_queue_rows_are_dropped_and_the_others_resumed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    history = HistoryFile(tmp_path / "history.sqlite3")
    good = Queued("00000001", "p" * 52, "bob", "a.txt", SHA, 3, 1.0)
    history.enqueue(good)
    rows(
        tmp_path / "history.sqlite3",
        "INSERT INTO queue (id, peer_id, peer_name, remote_path, sha256, size, started_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            ("00000002", "p" * 52, "bob", b"blob", SHA, 3, 2.0),
            ("00000003", None, "bob", "b.txt", SHA, 3, 3.0),
            ("00000004", "p" * 52, "bob", "c.txt", SHA, 3, "later"),
        ],
    )
    with caplog.at_level(logging.WARNING, "p2pd.history"):
        assert history.queued() == [good]
        assert history.queued() == [good]  # deleted: said once
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "3 damaged queued transfers" in warning and "dropped from the queue" in warning
    history.close()


def test_damaged_history_records_are_left_out_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "history.sqlite3"
    history = HistoryFile(path)
    good = Outcome("00000001", "/d/a", "a", "p" * 52, "bob", SHA, 3, "ok", None, 1.0, 2.0, 3.0)
    history.finish(good)
    values = [*list(good.to_json().values())[:-1], "[]"]  # sources are kept as JSON
    source = {"id": "p" * 52, "name": "bob", "bytes": 3, "bad_pieces": 0, "wasted_bytes": 0}
    rows(
        path,
        "INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            ("00000002", b"\x00", *values[2:]),
            ("00000003", *values[1:7], "exploded", *values[8:]),
            ("00000004", *values[1:6], -5, *values[7:]),
            ("00000005", *values[1:-1], "not json"),
            ("00000006", *values[1:-1], json.dumps([{**source, "liar": "no"}])),
            ("00000007", *values[1:-1], json.dumps([{**source, "liar": False, "bytes": -1}])),
            ("00000008", *values[1:-1], json.dumps({"id": "p" * 52})),
        ],
    )
    with caplog.at_level(logging.WARNING, "p2pd.history"):
        assert history.outcomes() == [good]
        assert history.outcomes() == [good]
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "7 damaged history records" in warning
    history.close()
