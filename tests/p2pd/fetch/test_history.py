"""The history file: outcomes round-trip, and a file written by an older p2pd is read."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from p2pd.fetch.history import HistoryFile
from p2pd.fetch.model import Outcome

OLD_SCHEMA = """
CREATE TABLE history (
    id TEXT PRIMARY KEY, path TEXT, remote_path TEXT, peer_id TEXT, peer_name TEXT,
    sha256 TEXT, size INTEGER, status TEXT, error TEXT,
    started_at REAL, finished_at REAL, bytes_per_second REAL
);
"""


def outcome(outcome_id: str, finished_at: float, *, already_there: bool) -> Outcome:
    return Outcome(
        outcome_id, "/d/a.txt", "a.txt", "b" * 52, "bob", "c" * 64, 3, "ok", None,
        finished_at - 1, finished_at, 0.0 if already_there else 3.0, already_there,
    )  # fmt: skip


def test_a_history_from_an_older_p2pd_gets_the_already_there_flag(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
        db.execute(
            "INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("00000001", "/d/a.txt", "a.txt", "b" * 52, "bob", "c" * 64, 3, "ok", None, 1, 2, 3),
        )
    db.close()
    history = HistoryFile(path)
    history.finish(outcome("00000002", 10, already_there=True))
    history.finish(outcome("00000003", 20, already_there=False))
    newest, there, old = history.outcomes()
    history.close()
    assert (newest.id, newest.already_there) == ("00000003", False)
    assert there == outcome("00000002", 10, already_there=True)
    assert (old.id, old.already_there, old.bytes_per_second) == ("00000001", False, 3.0)
