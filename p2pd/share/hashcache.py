"""The hash cache: sha256, pieces root and piece layer by (path, size, mtime_ns, inode).

Kept in SQLite across restarts.  What is read back is checked as strictly
as a member's listing: a row that is not what this cache writes (a sha256
or root that is not 64 lowercase hex digits, a path that breaks the path
rule, a size that is not a count, a piece size other than the one p2pd
picks for that size, a piece layer of the wrong length) is dropped with one
warning and its file hashed again.  Without that, one damaged row would be
listed as it is, and every member would refuse the whole listing as
invalid.  A piece layer is read only when a member asks for it, and checked
then against its root (``layer``): a bad one is dropped the same way.

Rows written before the cache kept pieces (no piece size) are hashed again
once, the rest of the file kept (the columns are added in place).  The
layers stay on disk (32 bytes a piece: a share of a terabyte of 16 KiB
pieces holds 2 GiB of them); memory keeps the sha256 and root of each file.
Blocking; used from worker threads.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from p2pcommon.boundary import describe
from p2pcommon.paths import is_safe_relpath
from p2pcommon.sqlite_text import text_or_bytes
from p2pd.share.hashing import Hashed
from p2pd.share.merkle import HASH_SIZE, layer_problem, piece_count, piece_size_for

log = logging.getLogger("p2pd.share")

#: Hashes are committed in batches of this many files or after this many seconds.
COMMIT_FILES = 256
COMMIT_SECONDS = 1.0
_SHA256 = re.compile(r"[0-9a-f]{64}")
_COLUMNS = "path, size, mtime_ns, inode, sha256, root, piece_size, layer"
#: Columns added since the first version of the table (kept rows get NULL: hashed again).
_ADDED = (("root", "TEXT"), ("piece_size", "INTEGER"), ("layer", "BLOB"))
#: A kept entry: what the file was, and its hashes.
Known = tuple["FileKey", Hashed]
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _locked(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """One thread at a time in the cache: the scan's, or a member's piece layer's."""

    @functools.wraps(method)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with args[0]._lock:  # type: ignore[attr-defined]
            return method(*args, **kwargs)

    return run


@dataclass(frozen=True, slots=True)
class FileKey:
    """Which file was hashed: a cached hash holds only while all three are the same."""

    size: int
    mtime_ns: int
    inode: int


class HashCache:
    """Hashes by (path, size, mtime_ns, inode): in memory, kept in SQLite across restarts.

    Used from worker threads, one at a time (a lock: the scan's, and those
    that read a piece layer for a member).  SQLite's failures (the state
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
        self._known: dict[str, Known] | None = None
        #: Rows not written yet, with their piece layers (kept while SQLite fails).
        self._pending: dict[str, tuple[FileKey, Hashed, bytes]] = {}
        self._last_commit = time.monotonic()
        #: The disk copy is stale (a write failed): rewrite all of it when SQLite works again.
        self._resync = False
        self._lock = threading.RLock()
        self.error: str | None = None

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self._db_path, timeout=5.0)
        connection.text_factory = text_or_bytes
        try:
            connection.execute(
                "CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INTEGER, "
                "mtime_ns INTEGER, inode INTEGER, sha256 TEXT, root TEXT, piece_size INTEGER, "
                "layer BLOB)"
            )
            present = {row[1] for row in connection.execute("PRAGMA table_info(hashes)")}
            for name, kind in _ADDED:
                if name not in present:  # a cache of an older p2pd: its rows are kept
                    connection.execute(f"ALTER TABLE hashes ADD COLUMN {name} {kind}")
        except BaseException:
            connection.close()
            raise
        return connection

    def _failed(self, exc: Exception) -> None:
        # The rows not written stay pending (with their layers): written once SQLite works.
        self._resync = True
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

    def _load(self) -> dict[str, Known]:
        if self._known is None:
            self._known = {}
            try:
                with contextlib.closing(self._connect()) as connection:
                    rows = connection.execute(
                        "SELECT rowid, path, size, mtime_ns, inode, sha256, root, piece_size, "
                        "length(layer) FROM hashes"
                    ).fetchall()
            except (sqlite3.Error, OSError) as exc:
                self._failed(exc)
            else:
                self._known, damaged, older = _checked(rows)
                if older:
                    log.info(
                        "%d files of the hash cache %s were hashed before p2pd kept their "
                        "pieces: hashed again once",
                        older,
                        self._db_path,
                    )
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

    @_locked
    def begin_scan(self) -> None:
        """Load the cache, or bring the file up to date if SQLite failed before: the rows
        not written meanwhile are written, those of files gone meanwhile deleted."""
        if self._known is None:
            self._load()
        elif self._resync:
            known = self._known
            try:
                with contextlib.closing(self._connect()) as connection, connection:
                    on_disk = [row[0] for row in connection.execute("SELECT path FROM hashes")]
                    gone = [(path,) for path in on_disk if path not in known]
                    connection.executemany("DELETE FROM hashes WHERE path = ?", gone)
                    connection.executemany(_INSERT, _rows(self._pending))
            except (sqlite3.Error, OSError) as exc:
                self._failed(exc)
            else:
                self._pending.clear()
                self._recovered()

    @_locked
    def lookup(self, path: str, key: FileKey) -> Hashed | None:
        known = self._load().get(path)
        return known[1] if known is not None and known[0] == key else None

    @_locked
    def add(self, path: str, key: FileKey, hashed: Hashed, layer: bytes) -> None:
        """Record a file's hashes and piece layer; committed with others every
        ``batch_files`` or ``batch_seconds``."""
        self._load()[path] = (key, hashed)
        self._pending[path] = (key, hashed, layer)
        if self._resync:
            return
        if (
            len(self._pending) >= self._batch_files
            or time.monotonic() - self._last_commit >= self._batch_seconds
        ):
            self._commit([])

    @_locked
    def flush(self) -> None:
        """Commit the hashes not committed yet."""
        if self._pending and not self._resync:
            self._commit([])

    @_locked
    def finish_scan(self, present: set[str]) -> None:
        """Commit what is pending and forget the files that are gone."""
        known = self._load()
        gone = [p for p in known if p not in present]
        for path in gone:
            del known[path]
            self._pending.pop(path, None)
        if not self._resync and (self._pending or gone):
            self._commit(gone)

    @_locked
    def store(self, rows: list[tuple[str, FileKey, Hashed, bytes]], present: set[str]) -> None:
        """Record hashes and forget the files not in ``present``, in one go."""
        for path, key, hashed, layer in rows:
            self.add(path, key, hashed, layer)
        self.finish_scan(present)

    @_locked
    def layer(self, path: str, key: FileKey, hashed: Hashed) -> bytes | None:
        """The piece layer of ``path`` as hashed (``key``, ``hashed``), checked against its
        root; None when there is none to give: the row is gone, damaged (dropped, so that
        the next scan hashes the file again) or SQLite cannot be read now (``error``)."""
        known = self._load().get(path)
        if known != (key, hashed):
            return None
        pending = self._pending.get(path)
        if pending is not None:
            return pending[2]
        try:
            with contextlib.closing(self._connect()) as connection:
                row = connection.execute(
                    "SELECT layer FROM hashes WHERE path = ? AND sha256 = ?",
                    (path, hashed.sha256),
                ).fetchone()
        except (sqlite3.Error, OSError) as exc:
            self._failed(exc)
            return None
        layer = row[0] if row is not None else None
        root = bytes.fromhex(hashed.root) if hashed.root is not None else None
        problem = (
            "no piece layer"
            if not isinstance(layer, bytes)
            else layer_problem(layer, root, key.size, hashed.piece_size)
        )
        if problem is not None:
            log.warning(
                "the hash cache %s held a bad piece layer for %s (%s): dropped, the file is "
                "hashed again",
                self._db_path,
                _shown(path),
                problem,
            )
            self.forget(path)
            return None
        assert isinstance(layer, bytes)
        return layer

    @_locked
    def forget(self, path: str) -> None:
        """Drop what is known of ``path``: the next scan hashes it again."""
        self._load().pop(path, None)
        self._pending.pop(path, None)
        if self._resync:
            return
        try:
            with contextlib.closing(self._connect()) as connection, connection:
                connection.execute("DELETE FROM hashes WHERE path = ?", (path,))
        except (sqlite3.Error, OSError) as exc:
            self._failed(exc)

    def _commit(self, gone: list[str]) -> None:
        rows = _rows(self._pending)
        self._last_commit = time.monotonic()
        try:
            with contextlib.closing(self._connect()) as connection, connection:
                connection.executemany(_INSERT, rows)
                connection.executemany("DELETE FROM hashes WHERE path = ?", [(p,) for p in gone])
        except (sqlite3.Error, OSError) as exc:
            self._failed(exc)
        else:
            self._pending.clear()


_INSERT = f"INSERT OR REPLACE INTO hashes ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"


def _rows(pending: dict[str, tuple[FileKey, Hashed, bytes]]) -> list[tuple[object, ...]]:
    return [
        (p, k.size, k.mtime_ns, k.inode, h.sha256, h.root, h.piece_size, layer)
        for p, (k, h, layer) in pending.items()
    ]


def _checked(
    rows: Sequence[Sequence[Any]],
) -> tuple[dict[str, Known], list[tuple[int, str]], int]:
    """The valid rows by path, (rowid, what is wrong) for each damaged one, and how many
    rows an older p2pd wrote (no piece size: their files are hashed again)."""
    known: dict[str, Known] = {}
    damaged: list[tuple[int, str]] = []
    older = 0
    for rowid, path, size, mtime_ns, inode, sha256, root, piece_size, layer_length in rows:
        problem = _problem(path, size, mtime_ns, inode, sha256)
        if problem is None and piece_size is None and root is None and layer_length is None:
            older += 1
            continue  # left in the file until the scan replaces or forgets it
        if problem is None:
            problem = _pieces_problem(path, size, root, piece_size, layer_length)
        if problem is None:
            known[path] = (FileKey(size, mtime_ns, inode), Hashed(sha256, root, piece_size))
        else:
            damaged.append((rowid, problem))
    return known, damaged, older


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


def _pieces_problem(
    path: str, size: int, root: Any, piece_size: Any, layer_length: Any
) -> str | None:
    """What is wrong with a row's pieces (its root, piece size, the layer's length)."""
    if piece_size != piece_size_for(size) or not isinstance(piece_size, int):
        return f"{_shown(path)}: piece size {_shown(piece_size)} is not p2pd's for {size} bytes"
    if size == 0:
        if root is not None:
            return f"{_shown(path)}: an empty file has no root, not {_shown(root)}"
    elif not isinstance(root, str) or not _SHA256.fullmatch(root):
        return f"{_shown(path)}: root {_shown(root)} is not 64 lowercase hex digits"
    pieces = piece_count(size, piece_size)
    wanted = HASH_SIZE * pieces if pieces > 1 else 0
    if layer_length != wanted:
        return f"{_shown(path)}: a piece layer of {_shown(layer_length)} bytes, not {wanted}"
    return None


def _shown(value: Any) -> str:
    """A value from the file, short and on one line, for the log."""
    text = ascii(value)
    return text if len(text) <= 80 else text[:77] + "..."
