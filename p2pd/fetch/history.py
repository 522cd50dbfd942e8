"""What p2pd remembers about transfers, in SQLite: the finished ones, and the queue.

The queue survives a killed daemon or a reboot: a transfer is in it from the
moment it is asked for until its outcome is in the history.  ``History`` is
the one owner of all that: the transfers and the control socket record
through it, and it keeps, while the file fails, the outcomes it could not
take and why.  ``HistoryFile`` is the SQLite file itself; every method of it
blocks, and ``History`` calls them through ``trio.to_thread``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import trio

from p2pcommon.sqlite_text import text_or_bytes
from p2pd.fetch.model import OUTCOME_SOURCE_FIELDS, Outcome, Queued

log = logging.getLogger("p2pd.history")
#: The history's failures are said where transfers are: what they mean is for them.
_transfers_log = logging.getLogger("p2pd.downloads")
_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    id TEXT PRIMARY KEY, path TEXT, remote_path TEXT, peer_id TEXT, peer_name TEXT,
    sha256 TEXT, size INTEGER, status TEXT, error TEXT,
    started_at REAL, finished_at REAL, bytes_per_second REAL, already_there INTEGER DEFAULT 0,
    sources TEXT
);
CREATE TABLE IF NOT EXISTS queue (
    id TEXT PRIMARY KEY, peer_id TEXT, peer_name TEXT, remote_path TEXT,
    sha256 TEXT, size INTEGER, started_at REAL, dest_name TEXT DEFAULT ''
);
"""


class HistoryUnavailable(Exception):
    """The history's SQLite file cannot be read or written now (disk full, read-only, …)."""


#: Outcomes kept in memory while the history cannot be written.
UNRECORDED_KEPT = 100


class History:
    """The transfers' history and queue: the file, and while it fails, what it lacks.

    A fault of the file (state_dir full, read-only, corrupt) never stops a
    transfer: it is noted (``error``, for status; logged once per reason),
    an outcome it could not take is kept in memory (the newest
    UNRECORDED_KEPT, which ``outcomes`` still lists), and the next record
    that succeeds clears it.
    """

    def __init__(self, db_path: Path) -> None:
        self.file = HistoryFile(db_path)
        #: Why the history cannot be written now, for status; None when it can.
        self.error: str | None = None
        #: Outcomes that could not be written, oldest first.
        self.unrecorded: list[Outcome] = []

    async def check(self) -> None:
        """Open (and create) the file now; a failure is noted, not raised."""
        try:
            await trio.to_thread.run_sync(self.file.check)
        except HistoryUnavailable as exc:
            self._failed(exc)

    async def queued(self) -> list[Queued]:
        """The transfers to resume; none while the file cannot be read (noted)."""
        try:
            return await trio.to_thread.run_sync(self.file.queued)
        except HistoryUnavailable as exc:
            self._failed(exc)
            return []

    def enqueue(self, queued: Queued) -> None:
        """Put a transfer in the persisted queue.  Blocking: for a worker thread.

        A failure is noted, not raised: the transfer is worth more than its
        resumability after a restart.
        """
        try:
            self.file.enqueue(queued)
        except HistoryUnavailable as exc:
            self._failed(exc)

    async def record(self, outcome: Outcome) -> None:
        """Record an outcome and take its transfer off the queue, or keep it in memory."""
        try:
            await trio.to_thread.run_sync(self.file.finish, outcome)
        except HistoryUnavailable as exc:
            self._failed(exc)
            self.unrecorded.append(outcome)
            del self.unrecorded[:-UNRECORDED_KEPT]
        else:
            self.error = None

    async def outcomes(self) -> list[Outcome]:
        """The outcomes, newest first: those in the file (HistoryUnavailable if it cannot
        be read now) and those kept in memory while it could not be written."""
        outcomes = await trio.to_thread.run_sync(self.file.outcomes)
        recorded = {o.id for o in outcomes}
        recent = [o for o in self.unrecorded if o.id not in recorded]
        return sorted(recent + outcomes, key=lambda o: -o.finished_at)

    def close(self) -> None:
        self.file.close()

    def _failed(self, exc: HistoryUnavailable) -> None:
        if self.error != str(exc):
            _transfers_log.error("%s; transfers go on, but are not recorded", exc)
        self.error = str(exc)


class HistoryFile:
    """One SQLite connection, used from worker threads one at a time.

    A fault of the file (state_dir full, read-only or corrupt) is reported as
    HistoryUnavailable by the call that met it, never fatal: the connection
    is opened again at the next call, so the history recovers by itself once
    the cause is gone.
    """

    def __init__(self, db_path: Path) -> None:
        self._path = db_path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._warned: set[int] = set()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, timeout=10, check_same_thread=False)
        db.text_factory = text_or_bytes
        try:
            # WAL with synchronous=NORMAL: one fsync per checkpoint instead of two per
            # commit. A crash of the daemon loses nothing; a power cut may lose the
            # last records, never corrupt the file.
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            with db:
                db.executescript(_SCHEMA)
                _add_missing_columns(db)
        except BaseException:
            db.close()
            raise
        return db

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """The connection, inside a transaction, for one thread at a time."""
        with self._lock:
            try:
                if self._db is None:
                    self._db = self._open()
                with self._db:
                    yield self._db
            except (sqlite3.Error, OSError) as exc:
                if self._db is not None and not isinstance(exc, sqlite3.IntegrityError):
                    self._db.close()
                    self._db = None
                raise HistoryUnavailable(f"history {self._path}: {exc}") from None

    def check(self) -> None:
        """Open (and create) the file now; HistoryUnavailable if it cannot be."""
        with self._connect():
            pass

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def enqueue(self, item: Queued) -> None:
        with self._connect() as db:
            db.execute(
                f"INSERT OR REPLACE INTO queue ({', '.join(_QUEUED_FIELDS)}) "
                f"VALUES ({', '.join('?' * len(_QUEUED_FIELDS))})",
                tuple(asdict(item).values()),
            )

    def queued(self) -> list[Queued]:
        """The transfers to resume.  A row that is not what ``enqueue`` writes (a
        damaged file, another program) is deleted with one warning: it can be
        neither resumed nor recorded, and must not stop the others."""
        with self._connect() as db:
            rows = db.execute(
                f"SELECT rowid, {', '.join(_QUEUED_FIELDS)} FROM queue ORDER BY started_at"
            ).fetchall()
            queue, damaged = _checked(rows, _QUEUED_TYPES, _queued)
            if damaged:
                db.executemany("DELETE FROM queue WHERE rowid = ?", [(r,) for r, _ in damaged])
        if damaged:
            _warn(self._path, "queued transfer", damaged, "dropped from the queue")
        return queue

    def finish(self, outcome: Outcome) -> None:
        """Record the outcome and take the transfer off the queue, atomically."""
        with self._connect() as db:
            fields = asdict(outcome)
            fields["sources"] = json.dumps(fields["sources"], separators=(",", ":"))
            db.execute(
                f"INSERT OR REPLACE INTO history ({', '.join(fields)}) "
                f"VALUES ({', '.join('?' * len(fields))})",
                tuple(fields.values()),
            )
            db.execute("DELETE FROM queue WHERE id = ?", (outcome.id,))

    def outcomes(self, limit: int = 1000) -> list[Outcome]:
        """The newest outcomes; a damaged row is left out (and logged once), never
        an answer that cannot be encoded or read."""
        with self._connect() as db:
            rows = db.execute(
                f"SELECT rowid, {', '.join(_OUTCOME_FIELDS)} FROM history "
                "ORDER BY finished_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        outcomes, damaged = _checked(rows, _OUTCOME_TYPES, _outcome)
        new = [(rowid, problem) for rowid, problem in damaged if rowid not in self._warned]
        if new and len(self._warned) < MAX_WARNED:
            self._warned.update(rowid for rowid, _ in new)
            _warn(self._path, "history record", new, "left out of `history`")
        return outcomes


def _queued(**fields: Any) -> Queued:
    # NULL in a row written before the column.
    fields["dest_name"] = fields["dest_name"] or ""
    return Queued(**fields)


def _outcome(**fields: Any) -> Outcome:
    # SQLite has no boolean: 0 or 1, and NULL in a row written before the column.
    fields["already_there"] = bool(fields["already_there"])
    fields["sources"] = json.loads(fields["sources"]) if fields["sources"] else []
    return Outcome(**fields)


#: Each field of a ``sources`` entry and what it holds; at most MAX_SOURCES entries.
_SOURCE_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,), "name": (str,), "bytes": (int,), "bad_pieces": (int,),
    "wasted_bytes": (int,), "liar": (bool,),
}  # fmt: skip
MAX_SOURCES = 256
assert tuple(_SOURCE_TYPES) == OUTCOME_SOURCE_FIELDS


def _sources_problem(text: str | None) -> str | None:
    """What is wrong with a record's ``sources`` (JSON, as ``finish`` writes it), or None."""
    if text is None:
        return None  # a record of an older p2pd: no sources
    try:
        sources = json.loads(text)
    except ValueError:
        return "sources is not JSON"
    if not isinstance(sources, list) or len(sources) > MAX_SOURCES:
        return f"sources is not a list of at most {MAX_SOURCES} members"
    for entry in sources:
        if not isinstance(entry, dict) or set(entry) != set(_SOURCE_TYPES):
            return f"a source is not an object of {', '.join(_SOURCE_TYPES)}"
        for name, allowed in _SOURCE_TYPES.items():
            value = entry[name]
            if not isinstance(value, allowed) or (bool not in allowed and isinstance(value, bool)):
                return f"a source's {name} is {type(value).__name__}"
            if isinstance(value, int) and not isinstance(value, bool) and value < 0:
                return f"a source's {name} is negative"
    return None


_OUTCOME_FIELDS = tuple(Outcome.__dataclass_fields__)
_QUEUED_FIELDS = tuple(Queued.__dataclass_fields__)
#: Damaged history rows already logged (by rowid), so that each is said once.
MAX_WARNED = 1000
_TEXT, _NUMBER, _COUNT = (str,), (int, float), (int,)
_QUEUED_TYPES: dict[str, tuple[type, ...]] = {
    "id": _TEXT, "peer_id": _TEXT, "peer_name": _TEXT, "remote_path": _TEXT,
    "sha256": _TEXT, "size": _COUNT, "started_at": _NUMBER, "dest_name": (str, type(None)),
}  # fmt: skip
_OUTCOME_TYPES: dict[str, tuple[type, ...]] = {
    "id": _TEXT, "path": _TEXT, "remote_path": _TEXT, "peer_id": _TEXT, "peer_name": _TEXT,
    "sha256": _TEXT, "size": _COUNT, "status": _TEXT, "error": (str, type(None)),
    "started_at": _NUMBER, "finished_at": _NUMBER, "bytes_per_second": _NUMBER,
    "already_there": (int, type(None)), "sources": (str, type(None)),
}  # fmt: skip
_STATUSES = ("ok", "failed", "cancelled")


def _checked(
    rows: list[Any], types: dict[str, tuple[type, ...]], build: Callable[..., _T]
) -> tuple[list[_T], list[tuple[int, str]]]:
    """``build(**fields)`` of each valid row (rowid first, then ``types``' columns in
    order); (rowid, what is wrong) for the others."""
    built: list[_T] = []
    damaged: list[tuple[int, str]] = []
    for rowid, *values in rows:
        fields = dict(zip(types, values, strict=True))
        problem = _problem(fields, types)
        if problem is None:
            built.append(build(**fields))
        else:
            damaged.append((rowid, f"{ascii(fields.get('id'))[:40]}: {problem}"))
    return built, damaged


def _problem(fields: dict[str, Any], types: dict[str, tuple[type, ...]]) -> str | None:
    for name, allowed in types.items():
        value = fields[name]
        if not isinstance(value, allowed) or isinstance(value, bool):
            return f"{name} is {type(value).__name__}, not {allowed[0].__name__}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"{name} is {value}"
        if allowed is _COUNT and isinstance(value, int) and value < 0:
            return f"{name} is negative"
    if "sources" in fields and (problem := _sources_problem(fields["sources"])) is not None:
        return problem
    if "status" in fields and fields["status"] not in _STATUSES:
        return f"status {ascii(fields['status'])[:40]} is none of {', '.join(_STATUSES)}"
    return None


def _warn(path: Path, what: str, damaged: list[tuple[int, str]], done: str) -> None:
    count = len(damaged)
    more = f" and {count - 1} more" if count > 1 else ""
    log.warning(
        "history %s: %d damaged %s%s (%s%s): %s",
        path,
        count,
        what,
        "" if count == 1 else "s",
        damaged[0][1],
        more,
        done,
    )


#: Columns added since the first release, with their type: a history file
#: written by an older p2pd gets them at its next open (older rows: the default).
#: Columns added since the first release, by table: a file written before gets them.
_ADDED_COLUMNS = {
    "history": {"already_there": "INTEGER DEFAULT 0", "sources": "TEXT"},
    "queue": {"dest_name": "TEXT DEFAULT ''"},
}


def _add_missing_columns(db: sqlite3.Connection) -> None:
    for table, columns in _ADDED_COLUMNS.items():
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns.items():
            if name not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
