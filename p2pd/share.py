"""Keeps the share's index current: a scan at start, then watchdog (inotify) events.

Blocking work (walking, stat, hashing, SQLite) runs in worker threads; the
watchdog observer's thread only hands paths to trio.  Events are coalesced:
after the last event of a burst has been quiet for ``settle`` seconds, the
share is rescanned, which costs a stat per file because hashes are cached
in SQLite by (path, size, mtime_ns, inode).  A file still being written
keeps producing events, so it is indexed once it settles.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from p2pd.index import FileEntry, ShareIndex

log = logging.getLogger("p2pd.share")

HASH_BLOCK = 1024 * 1024
# Only changes: without a filter inotify also reports every open and read, and
# serving a file would wake the watcher for each upload.
CHANGE_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirModifiedEvent,
    DirDeletedEvent,
    DirMovedEvent,
]
INOTIFY_HINT = (
    "the inotify watch limit is reached, so changes are found by rescanning every {interval:g} s; "
    "raise it with `sysctl fs.inotify.max_user_watches=524288` and keep it with "
    "`echo fs.inotify.max_user_watches=524288 > /etc/sysctl.d/60-p2pd.conf`"
)


@dataclass(frozen=True, slots=True)
class _Stat:
    size: int
    mtime_ns: int
    inode: int


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


class HashCache:
    """sha256 by (path, size, mtime_ns, inode), in SQLite; used from worker threads only."""

    def __init__(self, db_path: Path) -> None:
        self._db_path = db_path
        self._known: dict[str, tuple[_Stat, str]] | None = None

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self._db_path)
        connection.execute(
            "CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INTEGER, "
            "mtime_ns INTEGER, inode INTEGER, sha256 TEXT)"
        )
        return connection

    def _load(self) -> dict[str, tuple[_Stat, str]]:
        if self._known is None:
            with self._connect() as connection:
                rows = connection.execute("SELECT path, size, mtime_ns, inode, sha256 FROM hashes")
                self._known = {r[0]: (_Stat(r[1], r[2], r[3]), r[4]) for r in rows}
        return self._known

    def lookup(self, path: str, stat: _Stat) -> str | None:
        known = self._load().get(path)
        return known[1] if known is not None and known[0] == stat else None

    def store(self, rows: list[tuple[str, _Stat, str]], present: set[str]) -> None:
        """Record new hashes and forget files that are gone, in one transaction."""
        known = self._load()
        gone = [p for p in known if p not in present]
        if not rows and not gone:
            return
        with self._connect() as connection:
            connection.executemany(
                "INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?)",
                [(p, s.size, s.mtime_ns, s.inode, h) for p, s, h in rows],
            )
            connection.executemany("DELETE FROM hashes WHERE path = ?", [(p,) for p in gone])
        for path, stat, sha in rows:
            known[path] = (stat, sha)
        for path in gone:
            del known[path]


def scan(root: Path, cache: HashCache) -> list[FileEntry]:
    """Every shareable file under ``root`` with its hash (blocking; run in a thread)."""
    real_root = root.resolve()
    found: list[tuple[str, Path, os.stat_result]] = []
    for folder, dirs, files in os.walk(real_root, followlinks=False):
        # Hidden folders are not shared; symlinked folders are not followed (no loops).
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            path = Path(folder, name)
            try:
                if path.is_symlink():
                    target = path.resolve(strict=True)
                    if not target.is_relative_to(real_root):
                        continue
                stat = path.stat()
            except OSError:
                continue
            if not path.is_file():
                continue
            found.append((path.relative_to(real_root).as_posix(), path, stat))
    entries, new_rows = [], []
    for relative, path, st in found:
        key = _Stat(st.st_size, st.st_mtime_ns, st.st_ino)
        sha = cache.lookup(relative, key)
        if sha is None:
            try:
                sha = _sha256(path)
            except OSError as exc:
                log.warning("not sharing %s: %s", relative, exc.strerror or exc)
                continue
            new_rows.append((relative, key, sha))
        entries.append(FileEntry(relative, st.st_size, st.st_mtime_ns / 1e9, sha))
    cache.store(new_rows, {e.path for e in entries})
    return entries


class _Forward(FileSystemEventHandler):
    """Runs in watchdog's thread: only signals trio that something changed."""

    def __init__(self, poke: Callable[[], None]) -> None:
        self._poke = poke

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in ("opened", "closed_no_write"):
            self._poke()


class Share:
    def __init__(
        self,
        share_dir: Path,
        state_dir: Path,
        *,
        settle: float = 0.25,
        poll_interval: float = 5.0,
        observer_factory: Callable[[], BaseObserver] | None = None,
    ) -> None:
        self.root = share_dir.resolve()
        self.index = ShareIndex()
        self.warning: str | None = None
        self.watching = False
        self._cache = HashCache(state_dir / "index.sqlite3")
        self._settle = settle
        self._poll_interval = poll_interval
        self._observer_factory: Callable[[], Any] = observer_factory or Observer
        self._changed = trio.Event()
        self._dirty = trio.Event()
        self._scan_lock = trio.Lock()

    def disk_path(self, entry: FileEntry) -> Path:
        path = (self.root / entry.path).resolve()
        if not path.is_relative_to(self.root):
            raise OSError(errno.EACCES, f"{entry.path} resolves outside the share")
        return path

    async def changed(self) -> None:
        """Return at the next change of the listing."""
        await self._changed.wait()

    async def rescan(self) -> None:
        async with self._scan_lock:
            entries = await trio.to_thread.run_sync(scan, self.root, self._cache)
            if self.index.replace_all(entries):
                self._changed.set()
                self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        token = trio.lowlevel.current_trio_token()

        def poke() -> None:
            # Called from watchdog's thread; the loop may already be gone at shutdown.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._mark_dirty)

        observer = self._observer_factory()
        try:
            observer.schedule(
                _Forward(poke), str(self.root), recursive=True, event_filter=CHANGE_EVENTS
            )
            observer.start()
            self.watching = True
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EMFILE):
                raise
            self.warning = INOTIFY_HINT.format(interval=self._poll_interval)
            log.warning("%s", self.warning)
        await self.rescan()
        log.info("indexed %d files in %s", len(self.index), self.root)
        task_status.started()
        try:
            if self.watching:
                await self._follow_events()
            else:
                while True:
                    await trio.sleep(self._poll_interval)
                    await self.rescan()
        finally:
            self.watching = False
            if observer.is_alive():
                observer.stop()
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(observer.join)

    def _mark_dirty(self) -> None:
        self._dirty.set()

    async def _follow_events(self) -> None:
        while True:
            await self._dirty.wait()
            # Coalesce a burst: wait until it has been quiet for ``settle`` seconds.
            while self._dirty.is_set():
                self._dirty = trio.Event()
                with trio.move_on_after(self._settle):
                    await self._dirty.wait()
            await self.rescan()
