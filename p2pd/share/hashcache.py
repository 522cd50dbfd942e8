"""The hash cache: sha256 by (path, size, mtime_ns, inode), kept in SQLite across restarts.

What is read back is checked as strictly as a member's listing: a row that
is not what this cache writes (a sha256 that is not 64 lowercase hex
digits, a path that breaks the path rule, a size that is not a count) is
dropped with one warning and its file hashed again.  Without that, one
damaged row would be listed as it is, and every member would refuse the
whole listing as invalid.  Blocking; used from worker threads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pcommon.boundary import describe
from p2pcommon.paths import is_safe_relpath
from p2pcommon.sqlite_text import text_or_bytes

log = logging.getLogger("p2pd.share")

#: Hashes are committed in batches of this many files or after this many seconds.
COMMIT_FILES = 256
COMMIT_SECONDS = 1.0
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class FileKey:
    """Which file was hashed: a cached hash holds only while all three are the same."""

    size: int
    mtime_ns: int
    inode: int


class HashCache:
    """sha256 by (path, size, mtime_ns, inode): in memory, kept in SQLite across restarts.

    Used from one worker thread at a time.  SQLite's failures (the state
    folder full or read-only, a corrupt file) are logged once and reported
    in ``error``; the scan goes on with the hashes in memory, and the whole
    cache is written again at the start of a later scan once SQLite works.
    """

    def __init__(
        self,
        db_path: Path,
        *,
        batch_files: int = COMMIT_FILES,
        batch_seconds: float = COMMIT_SECONDS,
    ) -> None:
        self._db_path = db_path
        self._batch_files = batch_files
        self._batch_seconds = batch_seconds
        self._known: dict[str, tuple[FileKey, str]] | None = None
        self._pending: dict[str, tuple[FileKey, str]] = {}
        self._last_commit = time.monotonic()
        #: The disk copy is stale (a write failed): rewrite all of it when SQLite works again.
        self._resync = False
        self.error: str | None = None

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self._db_path, timeout=5.0)
        connection.text_factory = text_or_bytes
        try:
            connection.execute(
                "CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INTEGER, "
                "mtime_ns INTEGER, inode INTEGER, sha256 TEXT)"
            )
        except BaseException:
            connection.close()
            raise
        return connection

    def _failed(self, exc: Exception) -> None:
        self._resync = True
        self._pending.clear()
        text = describe(exc)
        if getattr(exc, "sqlite_errorcode", None) in (
            sqlite3.SQLITE_CORRUPT,
            sqlite3.SQLITE_NOTADB,
        ):
            # Only a cache: set the damaged file aside (for a post-mortem), so
            # that the next scan writes a new one.
            aside = self._db_path.with_name(self._db_path.name + ".corrupt")
            with contextlib.suppress(OSError):
                os.replace(self._db_path, aside)
                text += f"; moved to {aside.name}, a new cache is written at the next scan"
        if self.error is None:
            log.warning(
                "the hash cache %s cannot be used (%s): going on without it; "
                "hashes are kept in memory only, so a restart hashes every file again",
                self._db_path,
                text,
            )
        self.error = f"the hash cache {self._db_path} cannot be used ({text})"

    def _recovered(self) -> None:
        if self.error is not None:
            log.info("the hash cache %s works again", self._db_path)
        self.error = None
        self._resync = False

    def _load(self) -> dict[str, tuple[FileKey, str]]:
        if self._known is None:
            self._known = {}
            try:
                with contextlib.closing(self._connect()) as connection:
                    rows = connection.execute(
                        "SELECT rowid, path, size, mtime_ns, inode, sha256 FROM hashes"
                    ).fetchall()
            except (sqlite3.Error, OSError) as exc:
                self._failed(exc)
            else:
                self._known, damaged = _checked(rows)
                if damaged:
                    self._drop(damaged)
        return self._known

    def _drop(self, damaged: list[tuple[int, str]]) -> None:
        """Delete rows that are not what this cache writes: their files are hashed again."""
        rowid, problem = damaged[0]
        more = f" and {len(damaged) - 1} more" if len(damaged) > 1 else ""
        log.warning(
            "the hash cache %s had %d damaged row%s (%s%s): dropped, those files are hashed again",
            self._db_path,
            len(damaged),
            "" if len(damaged) == 1 else "s",
            problem,
            more,
        )
        try:
            with contextlib.closing(self._connect()) as connection, connection:
                connection.executemany(
                    "DELETE FROM hashes WHERE rowid = ?", [(rowid,) for rowid, _ in damaged]
                )
        except (sqlite3.Error, OSError) as exc:
            self._failed(exc)  # rewritten whole, without them, once SQLite works again

    def begin_scan(self) -> None:
        """Load the cache, or write all of it again if SQLite failed before."""
        if self._known is None:
            self._load()
        elif self._resync:
            known = self._known
            try:
                with contextlib.closing(self._connect()) as connection, connection:
                    connection.execute("DELETE FROM hashes")
                    connection.executemany(
                        "INSERT INTO hashes VALUES (?, ?, ?, ?, ?)",
                        [(p, s.size, s.mtime_ns, s.inode, h) for p, (s, h) in known.items()],
                    )
            except (sqlite3.Error, OSError) as exc:
                self._failed(exc)
            else:
                self._recovered()

    def lookup(self, path: str, key: FileKey) -> str | None:
        known = self._load().get(path)
        return known[1] if known is not None and known[0] == key else None

    def add(self, path: str, key: FileKey, sha: str) -> None:
        """Record a hash; committed with others every ``batch_files`` or ``batch_seconds``."""
        self._load()[path] = (key, sha)
        if self._resync:
            return
        self._pending[path] = (key, sha)
        if (
            len(self._pending) >= self._batch_files
            or time.monotonic() - self._last_commit >= self._batch_seconds
        ):
            self._commit([])

    def flush(self) -> None:
        """Commit the hashes not committed yet."""
        if self._pending and not self._resync:
            self._commit([])

    def finish_scan(self, present: set[str]) -> None:
        """Commit what is pending and forget the files that are gone."""
        known = self._load()
        gone = [p for p in known if p not in present]
        for path in gone:
            del known[path]
            self._pending.pop(path, None)
        if not self._resync and (self._pending or gone):
            self._commit(gone)

    def store(self, rows: list[tuple[str, FileKey, str]], present: set[str]) -> None:
        """Record hashes and forget the files not in ``present``, in one go."""
        for path, key, sha in rows:
            self.add(path, key, sha)
        self.finish_scan(present)

    def _commit(self, gone: list[str]) -> None:
        rows = [(p, s.size, s.mtime_ns, s.inode, h) for p, (s, h) in self._pending.items()]
        self._pending.clear()
        self._last_commit = time.monotonic()
        try:
            with contextlib.closing(self._connect()) as connection, connection:
                connection.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?)", rows)
                connection.executemany("DELETE FROM hashes WHERE path = ?", [(p,) for p in gone])
        except (sqlite3.Error, OSError) as exc:
            self._failed(exc)


def _checked(
    rows: Sequence[Sequence[Any]],
) -> tuple[dict[str, tuple[FileKey, str]], list[tuple[int, str]]]:
    """The valid rows by path, and (rowid, what is wrong) for each other one."""
    known: dict[str, tuple[FileKey, str]] = {}
    damaged: list[tuple[int, str]] = []
    for rowid, path, size, mtime_ns, inode, sha256 in rows:
        problem = _problem(path, size, mtime_ns, inode, sha256)
        if problem is None:
            known[path] = (FileKey(size, mtime_ns, inode), sha256)
        else:
            damaged.append((rowid, problem))
    return known, damaged


def _problem(path: Any, size: Any, mtime_ns: Any, inode: Any, sha256: Any) -> str | None:
    """What makes a row unusable, in words; None for a row as this cache writes them."""
    if not isinstance(path, str) or not is_safe_relpath(path):
        return f"path {_shown(path)} is not a shareable relative path"
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        return f"{_shown(path)}: sha256 {_shown(sha256)} is not 64 lowercase hex digits"
    for name, value in (("size", size), ("mtime_ns", mtime_ns), ("inode", inode)):
        if not isinstance(value, int):
            return f"{_shown(path)}: {name} {_shown(value)} is not an integer"
        if value < 0 and name != "mtime_ns":  # an mtime before 1970 is a time like any other
            return f"{_shown(path)}: {name} {value} is negative"
    return None


def _shown(value: Any) -> str:
    """A value from the file, short and on one line, for the log."""
    text = ascii(value)
    return text if len(text) <= 80 else text[:77] + "..."
