"""The history: outcomes round-trip, a file written by an older p2pd is read, and a
file that fails loses no outcome meanwhile."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from p2pd.fetch.history import UNRECORDED_KEPT, History, HistoryFile
from p2pd.fetch.model import Outcome, Queued

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


OLD_QUEUE = """
CREATE TABLE queue (
    id TEXT PRIMARY KEY, peer_id TEXT, peer_name TEXT, remote_path TEXT,
    sha256 TEXT, size INTEGER, started_at REAL
);
"""


def test_a_queue_from_an_older_p2pd_resumes_and_takes_a_destination_name(
    tmp_path: Path,
) -> None:
    path = tmp_path / "history.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_QUEUE)
        db.execute(
            "INSERT INTO queue VALUES (?, ?, ?, ?, ?, ?, ?)",
            ("00000001", "b" * 52, "bob", "music/a.flac", "c" * 64, 3, 1.0),
        )
    db.close()
    history = HistoryFile(path)
    named = Queued("00000002", "b" * 52, "bob", "music/a.flac", "d" * 64, 4, 2.0, "mine.flac")
    history.enqueue(named)
    old, new = history.queued()
    history.close()
    assert old == Queued("00000001", "b" * 52, "bob", "music/a.flac", "c" * 64, 3, 1.0)
    assert old.dest_name == "" and new == named


async def test_while_the_file_fails_outcomes_are_kept_and_said_then_it_heals(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "state"  # not there yet: the file cannot be opened
    history = History(state_dir / "history.sqlite3")
    await history.check()
    assert history.error is not None and "history" in history.error
    for number in range(UNRECORDED_KEPT + 1):
        await history.record(outcome(f"{number:08x}", 10 + number, already_there=False))
    assert len(history.unrecorded) == UNRECORDED_KEPT  # bounded: the newest are kept
    assert history.unrecorded[0].id == "00000001"
    state_dir.mkdir()
    await history.record(outcome("ffffffff", 1000, already_there=True))
    assert history.error is None
    listed = await history.outcomes()  # the file's, and those it could not take, newest first
    assert [o.id for o in listed[:2]] == ["ffffffff", f"{UNRECORDED_KEPT:08x}"]
    assert len(listed) == UNRECORDED_KEPT + 1
    assert [o.id for o in history.file.outcomes()] == ["ffffffff"]
    history.close()
