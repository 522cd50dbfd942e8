"""What p2pd remembers about transfers, in SQLite: the finished ones, and the queue.

The queue survives a killed daemon or a reboot: a transfer is in it from the
moment it is asked for until its outcome is in the history.  Every function
here blocks; the daemon calls them through ``trio.to_thread``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    id TEXT PRIMARY KEY, path TEXT, remote_path TEXT, peer_id TEXT, peer_name TEXT,
    sha256 TEXT, size INTEGER, status TEXT, error TEXT,
    started_at REAL, finished_at REAL, bytes_per_second REAL
);
CREATE TABLE IF NOT EXISTS queue (
    id TEXT PRIMARY KEY, peer_id TEXT, peer_name TEXT, remote_path TEXT,
    sha256 TEXT, size INTEGER, started_at REAL
);
"""


@dataclass(frozen=True)
class Outcome:
    id: str
    path: str
    remote_path: str
    peer_id: str
    peer_name: str
    sha256: str
    size: int
    status: str  # ok, failed or cancelled
    error: str | None
    started_at: float
    finished_at: float
    bytes_per_second: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Queued:
    id: str
    peer_id: str
    peer_name: str
    remote_path: str
    sha256: str
    size: int
    started_at: float


class History:
    """One SQLite connection, used from worker threads one at a time."""

    def __init__(self, db_path: Path) -> None:
        self._db = sqlite3.connect(db_path, timeout=10, check_same_thread=False)
        self._lock = threading.Lock()
        # WAL with synchronous=NORMAL: one fsync per checkpoint instead of two per
        # commit. A crash of the daemon loses nothing; a power cut may lose the
        # last records, never corrupt the file.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """The connection, inside a transaction, for one thread at a time."""
        with self._lock, self._db:
            yield self._db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def enqueue(self, item: Queued) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO queue VALUES (?, ?, ?, ?, ?, ?, ?)",
                tuple(asdict(item).values()),
            )

    def queued(self) -> list[Queued]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM queue ORDER BY started_at").fetchall()
        return [Queued(*row) for row in rows]

    def finish(self, outcome: Outcome) -> None:
        """Record the outcome and take the transfer off the queue, atomically."""
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                tuple(asdict(outcome).values()),
            )
            db.execute("DELETE FROM queue WHERE id = ?", (outcome.id,))

    def outcomes(self, limit: int = 1000) -> list[Outcome]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM history ORDER BY finished_at DESC LIMIT ?", (limit,)
            ).fetchall()
        return [Outcome(*row) for row in rows]
