"""Keeps the share's index current: a scan at start, then watchdog (inotify) events.

Blocking work (walking, stat, hashing, SQLite) runs in worker threads; the
watchdog observer's thread only hands paths to trio.  Events are coalesced:
after the last event of a burst has been quiet for ``settle`` seconds, the
share is rescanned, which costs a stat per file because hashes are cached
(in memory, and in SQLite across restarts) by (path, size, mtime_ns, inode).
A file still being written keeps producing events, so it is indexed once it
settles; and a file is offered only once it has been stable (size and mtime
unchanged) for ``stable_after`` seconds, so that a writer that pauses
mid-file does not get half a file listed and hashed.  Until then the file is
"waiting" (counted in ``status``) and a rescan is scheduled for when it will
be old enough, so it appears without further events.

The share's contents never end or stall the daemon (docs/protocol.md §4):
what the scan (p2pd.share.scan) cannot share is skipped with a warning and a
record for ``status``; a failing rescan keeps the last good index.  A first
scan of a large share publishes files as they are hashed, and readiness does
not wait for it beyond ``ready_after`` seconds.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

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

from p2pcommon.boundary import describe, failure_boundary
from p2pd.share import safeopen
from p2pd.share.hashcache import FileKey
from p2pd.share.hashing import Hashed
from p2pd.share.index import FileEntry, ShareIndex
from p2pd.share.scan import HashCache, ScanProgress, Seen, Skipped, Waiting, scan

log = logging.getLogger("p2pd.share")

#: Seconds ``Share.run`` waits for the first scan before it reports started.
READY_AFTER = 5.0
#: Longest pause after rescans that keep failing.
MAX_RETRY_PAUSE = 60.0
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
WATCH_FAILED = (
    "the share cannot be watched ({error}), so changes are found by rescanning every {interval:g} s"
)


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
        ready_after: float = READY_AFTER,
        stable_after: float = 0.0,
        observer_factory: Callable[[], BaseObserver] | None = None,
    ) -> None:
        """``stable_after``: seconds a file must be unchanged before it is offered (0: at once)."""
        self.root = share_dir.resolve()
        self.index = ShareIndex()
        self.watching = False
        #: True while a scan runs (the first one publishes files as it hashes them).
        self.indexing = False
        self.progress = ScanProgress()
        #: A few skipped entries of the last scan (printable path → reason), and how many.
        self.skipped: dict[str, str] = {}
        self.skipped_count = 0
        #: Why the last scan failed as a whole (the share folder unreadable), if it did.
        self.scan_error: str | None = None
        self._watch_warning: str | None = None
        self._skipped_summary: str | None = None
        self._reported: set[str] = set()
        self._scanned = False  # a scan has completed
        self._cache = HashCache(state_dir / "index.sqlite3")
        self._settle = settle
        self._poll_interval = poll_interval
        self._ready_after = ready_after
        self._stable_after = stable_after
        #: The files the last scan held back (Waiting.seen), and when to scan again for them.
        self._waiting: Seen = {}
        self._due: float | None = None  # trio.current_time()
        self._wait_scope: trio.CancelScope | None = None
        self._observer_factory: Callable[[], Any] = observer_factory or Observer
        self._changed = trio.Event()
        self._scan_ended = trio.Event()
        self._dirty = trio.Event()
        self._scan_lock = trio.Lock()

    @property
    def warning(self) -> str | None:
        """One line for ``status``: what keeps the share from being fully shared or watched."""
        parts = [self._watch_warning, self.scan_error, self._cache.error, self._skipped_summary]
        return "; ".join(p for p in parts if p) or None

    def status(self) -> dict[str, Any]:
        """Fields for the daemon's ``status``."""
        return {
            "indexing": self.indexing,
            "scanned_files": self.progress.files,
            "hashed_files": self.progress.hashed,
            "waiting_files": len(self._waiting),
            "skipped_count": self.skipped_count,
            "skipped": dict(self.skipped),
            "hash_cache_error": self._cache.error,
        }

    def open_entry(self, entry: FileEntry) -> BinaryIO:
        """The indexed file, opened without following links (blocking; run in a thread).

        safeopen.FileChanged if it is no longer the file that was indexed;
        another OSError if it cannot be opened (gone, a link in its path, …).
        """
        return safeopen.open_indexed(self.root, entry)

    def open_and_read(self, entry: FileEntry, offset: int, length: int) -> tuple[BinaryIO, bytes]:
        """``open_entry``, and up to ``length`` bytes from ``offset`` (blocking).

        Fewer bytes than asked mean the file shrank: the next read finds out.
        """
        handle = self.open_entry(entry)
        try:
            return handle, os.pread(handle.fileno(), length, offset) if length else b""
        except BaseException:
            handle.close()
            raise

    def piece_layer(self, entry: FileEntry) -> bytes | None:
        """The piece layer of the indexed ``entry``, checked against its root (blocking).

        None when it cannot be given now: the hash cache cannot be read, or its
        row was damaged (dropped: the next scan hashes the file again).
        """
        hashed = Hashed(entry.sha256, entry.root, entry.piece_size)
        return self._cache.layer(entry.path, FileKey(entry.size, entry.mtime_ns, entry.ino), hashed)

    def nudge(self) -> None:
        """Ask for a rescan soon (the index was found stale); call from trio."""
        self._dirty.set()

    async def changed(self) -> None:
        """Return at the next change of the listing."""
        await self._changed.wait()

    async def scanned(self) -> None:
        """Return at the end of the next scan, whether it worked or not."""
        await self._scan_ended.wait()

    def _signal_changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _publish(self, batch: list[FileEntry]) -> None:
        if self.index.upsert_many(batch):
            self._signal_changed()

    def _scan(
        self, skipped: Skipped, progress: ScanProgress, first: bool, waiting: Waiting
    ) -> list[FileEntry]:
        def publish(batch: list[FileEntry]) -> None:
            trio.from_thread.run_sync(self._publish, batch)

        # The first scan publishes files as it goes, so they are served while the
        # rest is hashed; a later one changes the listing in one step, so that
        # a file renamed is never listed under both names.
        return scan(
            self.root,
            self._cache,
            skipped=skipped,
            progress=progress,
            publish=publish if first else None,
            check=trio.from_thread.check_cancelled,
            waiting=waiting,
        )

    async def rescan(self) -> None:
        """Scan the share now; raises (keeping the last index) if the share cannot be read."""
        async with self._scan_lock:
            skipped = Skipped(self._reported)
            self.progress = progress = ScanProgress()
            waiting = Waiting(self._stable_after, self._waiting)
            self.indexing = True
            try:
                entries = await trio.to_thread.run_sync(
                    self._scan, skipped, progress, not self._scanned, waiting
                )
            except OSError as exc:
                self.scan_error = f"the share {self.root} cannot be read ({describe(exc)})"
                raise
            finally:
                self.indexing = False
                self._scan_ended.set()
                self._scan_ended = trio.Event()
            self.scan_error = None
            self._scanned = True
            self.skipped, self.skipped_count = skipped.examples, skipped.count
            self._skipped_summary = skipped.summary()
            self._reported = skipped.reported
            self._waiting = waiting.seen
            self._schedule(waiting.delay)
            if self.index.replace_all(entries):
                self._signal_changed()

    async def _rescan_contained(self, what: str) -> bool:
        """A rescan inside the failure boundary: True if it worked."""
        with failure_boundary("rescan", what, logger=log):
            await self.rescan()
            return True
        return False

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
            # In a thread: start() adds a watch per folder, seconds for a large tree.
            await trio.to_thread.run_sync(observer.start)
            self.watching = True
        except Exception as exc:  # never fatal: without a watcher, the share is polled
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EMFILE):
                self._watch_warning = INOTIFY_HINT.format(interval=self._poll_interval)
            else:
                self._watch_warning = WATCH_FAILED.format(
                    error=describe(exc), interval=self._poll_interval
                )
            log.warning("%s", self._watch_warning)
        try:
            async with trio.open_nursery() as nursery:
                first_done = trio.Event()

                async def first_scan() -> None:
                    started = time.monotonic()
                    if await self._rescan_contained("the first scan of the share"):
                        log.info(
                            "indexed %d files in %s (%.1f s)",
                            len(self.index),
                            self.root,
                            time.monotonic() - started,
                        )
                    first_done.set()

                nursery.start_soon(first_scan)
                with trio.move_on_after(self._ready_after):
                    await first_done.wait()
                if not first_done.is_set():
                    log.info(
                        "still indexing %s: serving the %d files indexed so far meanwhile",
                        self.root,
                        len(self.index),
                    )
                task_status.started()
                await first_done.wait()
                await self._follow_changes(observer)
        finally:
            self.watching = False
            if observer.is_alive():
                observer.stop()
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(observer.join)

    def _mark_dirty(self) -> None:
        self._dirty.set()

    def _schedule(self, delay: float | None) -> None:
        """Scan again in ``delay`` seconds (files wait to be stable), or not (None)."""
        if delay is None:
            self._due = None
            return
        # A little late rather than early, so that the file is then old enough.
        self._due = trio.current_time() + delay + 0.01
        if self._wait_scope is not None:
            self._wait_scope.deadline = min(self._wait_scope.deadline, self._due)

    def _due_now(self) -> bool:
        return self._due is not None and trio.current_time() >= self._due

    async def _follow_changes(self, observer: Any) -> None:
        """Rescan after each settled burst of events, when waiting files become stable,
        and every ``poll_interval`` unwatched."""
        failures = 0
        while True:
            deadline = trio.current_time() + self._poll_interval
            if self._due is not None:
                deadline = min(deadline, self._due)
            # The scope's deadline moves earlier if a rescan from elsewhere schedules one.
            with trio.move_on_at(deadline) as self._wait_scope:
                await self._dirty.wait()
            self._wait_scope = None
            if self.watching and not self._dirty.is_set() and not self._due_now():
                if observer.is_alive():
                    continue
                self.watching = False
                self._watch_warning = WATCH_FAILED.format(
                    error="the watcher stopped", interval=self._poll_interval
                )
                log.warning("%s", self._watch_warning)
            # Coalesce a burst: wait until it has been quiet for ``settle`` seconds.
            while self._dirty.is_set():
                self._dirty = trio.Event()
                with trio.move_on_after(self._settle):
                    await self._dirty.wait()
            if await self._rescan_contained("a rescan of the share"):
                failures = 0
            else:
                failures += 1
                await trio.sleep(min(MAX_RETRY_PAUSE, self._settle * 2**failures))
