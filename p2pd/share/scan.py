"""The scan: every shareable file under the share's root with its hashes. Blocking.

A file's sha256, pieces root and piece layer come from one read of it
(p2pd.share.hashing).

It walks from a descriptor of the root without following any link, and
skips, with one warning each and a record for ``status``, what it cannot
share: names that break the path rule (p2pcommon.paths), symbolic links,
FIFOs, sockets, devices, unreadable folders and files.  Hashes are cached
in memory and, across restarts, in SQLite by (path, size, mtime_ns, inode),
committed in batches as they are computed so that a kill keeps what was
hashed; a broken cache is reported and the scan goes on without it.
A file that changed less than ``stable_after`` seconds ago may still be
being written: it is neither hashed nor listed, but counted in ``Waiting``,
which says when to look again.  Runs in worker threads only.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from p2pcommon.boundary import describe
from p2pcommon.paths import UnsafePath, check_relpath
from p2pd.share import safeopen
from p2pd.share.hashcache import FileKey
from p2pd.share.hashcache import HashCache as HashCache
from p2pd.share.hashing import FileHasher, Hashed
from p2pd.share.index import FileEntry

log = logging.getLogger("p2pd.share")

#: Hashes are committed to the cache, and files published to the index, in
#: batches of this many files or after this many seconds, whichever is first.
BATCH_FILES = 256
BATCH_SECONDS = 1.0
#: Examples of skipped entries kept for ``status``; skipped paths remembered
#: so that each is logged once, not at every rescan; new warnings per scan.
MAX_SKIPPED_EXAMPLES = 20
MAX_SKIPPED_REMEMBERED = 10_000
MAX_SKIP_WARNINGS_PER_SCAN = 100


def printable(path: str) -> str:
    """``path`` as one line of text: undecodable bytes and control characters escaped."""
    try:
        text = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return ascii(path)[1:-1]
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link (links are not followed, so not shared)"
    if stat.S_ISFIFO(mode):
        return "a FIFO, not a regular file"
    if stat.S_ISSOCK(mode):
        return "a socket, not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a regular file"
    return "not a regular file"


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "it vanished during the scan"
    return exc.strerror or describe(exc)


def _hash_file(
    hasher: FileHasher, fd: int, size: int, check: Callable[[], None] | None
) -> tuple[Hashed, bytes]:
    """The hashes and piece layer of the open file ``fd`` of ``size`` bytes."""
    return hasher.hash_fd(fd, size, check)


class Skipped:
    """What one scan left out and why: a count, a few examples, one log line per new one."""

    def __init__(self, reported_before: set[str] | None = None) -> None:
        self.count = 0
        self.examples: dict[str, str] = {}
        #: "path: reason" of this scan (bounded), so the next scan logs only new ones.
        self.reported: set[str] = set()
        self._before = reported_before or set()
        self._warned = 0

    def add(self, path: str, reason: str) -> None:
        shown = printable(path) or "(the share folder)"
        self.count += 1
        if len(self.examples) < MAX_SKIPPED_EXAMPLES:
            self.examples[shown] = reason
        key = f"{shown}: {reason}"
        if key not in self._before and self._warned < MAX_SKIP_WARNINGS_PER_SCAN:
            self._warned += 1
            log.warning("not sharing %s", key)
        if len(self.reported) < MAX_SKIPPED_REMEMBERED:
            self.reported.add(key)

    def summary(self) -> str | None:
        if not self.count:
            return None
        path, reason = next(iter(self.examples.items()))
        entries = "entry in the share is" if self.count == 1 else "entries in the share are"
        return f"{self.count} {entries} not shared (such as {path}: {reason})"


#: Files held back by a scan: path → (what was seen, time.monotonic() since when unchanged).
Seen = dict[str, tuple[FileKey, float]]


class Waiting:
    """Files held back by a scan because they changed too recently to be complete.

    A file is offered once it has been stable -- size, mtime and inode
    unchanged -- for ``stable_after`` seconds: its mtime is at least that
    old by the wall clock, or (an mtime in the future, a clock that jumped)
    successive scans have seen it unchanged for that long.  ``before`` is the
    previous scan's ``seen``, so that the second rule spans scans; ``delay``
    is how long after this scan the first held file becomes stable.
    """

    def __init__(self, stable_after: float = 0.0, before: Seen | None = None) -> None:
        self.stable_after = stable_after
        self.seen: Seen = {}
        self._before = before or {}
        self._due: float | None = None  # time.monotonic() of the first file to become stable

    def __len__(self) -> int:
        return len(self.seen)

    @property
    def delay(self) -> float | None:
        """Seconds from now until the first held file is stable; None if none is held."""
        return None if self._due is None else max(0.0, self._due - time.monotonic())

    def ready(self, path: str, st: os.stat_result) -> bool:
        """True if the file ``path`` as ``st`` may be offered now; else it is held."""
        if self.stable_after <= 0:
            return True
        return not self._hold(path, st, forced=False)

    def hold(self, path: str, st: os.stat_result) -> None:
        """Hold the file back (it changed while it was hashed), to be looked at again."""
        if self.stable_after > 0:
            self._hold(path, st, forced=True)

    def _hold(self, path: str, st: os.stat_result, *, forced: bool) -> bool:
        key = FileKey(st.st_size, st.st_mtime_ns, st.st_ino)
        age = (time.time_ns() - st.st_mtime_ns) / 1e9
        now = time.monotonic()
        before = self._before.get(path)
        since = before[1] if before is not None and before[0] == key else now
        unchanged = now - since
        if not forced and (age >= self.stable_after or unchanged >= self.stable_after):
            return False
        self.seen[path] = (key, since)
        due = now + max(0.0, self.stable_after - max(age, unchanged))
        self._due = due if self._due is None else min(self._due, due)
        return True


@dataclass
class ScanProgress:
    """How far the current (or last) scan got; written by the scanning thread."""

    files: int = 0
    hashed: int = 0
    hashed_bytes: int = 0


def scan(
    root: Path,
    cache: HashCache,
    *,
    skipped: Skipped | None = None,
    progress: ScanProgress | None = None,
    publish: Callable[[list[FileEntry]], None] | None = None,
    check: Callable[[], None] | None = None,
    waiting: Waiting | None = None,
) -> list[FileEntry]:
    """Every shareable file under ``root`` with its hash (blocking; run in a thread).

    Files that changed too recently for ``waiting`` (by default: none) are
    left out and recorded there.  ``publish`` gets the entries in batches as
    they are found or hashed; ``check`` is called between files and blocks
    and may raise to stop the scan (trio.from_thread.check_cancelled).
    OSError only when the share's root itself cannot be opened; anything
    below it that cannot be shared is counted in ``skipped``.
    """
    skipped = skipped if skipped is not None else Skipped()
    progress = progress if progress is not None else ScanProgress()
    waiting = waiting if waiting is not None else Waiting()
    cache.begin_scan()
    entries: list[FileEntry] = []
    batch: list[FileEntry] = []
    published = time.monotonic()
    root_fd = safeopen.open_root(root)
    hasher = FileHasher()
    try:
        folders = [""]
        while folders:
            folder = folders.pop()
            try:
                dir_fd = safeopen.open_folder(root_fd, folder)
            except OSError as exc:
                if not folder:
                    raise  # the share itself: nothing can be shared, the caller reports it
                skipped.add(folder, f"the folder cannot be read: {_reason(exc)}")
                continue
            try:
                try:
                    with os.scandir(dir_fd) as listing:
                        names = [item.name for item in listing]
                except OSError as exc:
                    if not folder:
                        raise
                    skipped.add(folder, f"the folder cannot be read: {_reason(exc)}")
                    continue
                for name in names:
                    if check is not None:
                        check()
                    if name.startswith("."):
                        continue  # hidden: partial downloads, .git, … are never shared
                    relative = f"{folder}/{name}" if folder else name
                    found = _visit(
                        dir_fd, name, relative, cache, skipped, progress, check, waiting, hasher
                    )
                    if found is None:
                        continue
                    if isinstance(found, str):
                        folders.append(found)
                        continue
                    entries.append(found)
                    batch.append(found)
                    if publish is not None and (
                        len(batch) >= BATCH_FILES or time.monotonic() - published >= BATCH_SECONDS
                    ):
                        publish(batch)
                        batch, published = [], time.monotonic()
            finally:
                os.close(dir_fd)
    except BaseException:
        cache.flush()  # stopped or failed: keep the hashes computed so far
        raise
    finally:
        hasher.close()
        os.close(root_fd)
    if publish is not None and batch:
        publish(batch)
    # A held file keeps its cached hash: unchanged when it is offered, it is not hashed again.
    cache.finish_scan({e.path for e in entries} | waiting.seen.keys())
    return entries


def _visit(
    dir_fd: int,
    name: str,
    relative: str,
    cache: HashCache,
    skipped: Skipped,
    progress: ScanProgress,
    check: Callable[[], None] | None,
    waiting: Waiting,
    hasher: FileHasher,
) -> FileEntry | str | None:
    """One entry of a folder: a FileEntry, a folder's path to walk, or None (skipped, held)."""
    try:
        check_relpath(relative)
    except UnsafePath as exc:
        skipped.add(relative, str(exc))
        return None
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        skipped.add(relative, _reason(exc))
        return None
    if stat.S_ISDIR(st.st_mode):
        return relative
    if not stat.S_ISREG(st.st_mode):
        skipped.add(relative, _kind(st.st_mode))
        return None
    progress.files += 1
    if not waiting.ready(relative, st):
        return None  # perhaps still being written: not hashed, looked at again once stable
    hashed = cache.lookup(relative, FileKey(st.st_size, st.st_mtime_ns, st.st_ino))
    if hashed is None:
        try:
            fd = os.open(name, safeopen.FILE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            skipped.add(relative, _kind(stat.S_IFLNK) if exc.errno == errno.ELOOP else _reason(exc))
            return None
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                skipped.add(relative, _kind(before.st_mode))
                return None
            hashed, layer = _hash_file(hasher, fd, before.st_size, check)
            st = os.fstat(fd)
        except OSError as exc:
            skipped.add(relative, f"it cannot be read: {_reason(exc)}")
            return None
        finally:
            os.close(fd)
        if (before.st_size, before.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            log.debug("%s changed while being hashed; indexed once it settles", relative)
            waiting.hold(relative, st)
            return None
        cache.add(relative, FileKey(st.st_size, st.st_mtime_ns, st.st_ino), hashed, layer)
        progress.hashed += 1
        progress.hashed_bytes += st.st_size
    return FileEntry(
        relative,
        st.st_size,
        st.st_mtime_ns / 1e9,
        hashed.sha256,
        root=hashed.root,
        piece_size=hashed.piece_size,
        dev=st.st_dev,
        ino=st.st_ino,
        mtime_ns=st.st_mtime_ns,
    )
