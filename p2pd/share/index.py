"""The share's index: which files are shared, with size, mtime, sha256 and pieces root.

Pure, no I/O.

Its ``generation`` bumps on every change of the listing, and on nothing else,
so peers can cache a listing by ETag and tests can wait for a change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from p2pcommon.paths import is_safe_relpath

#: The one path rule (p2pcommon.paths), under the name callers already import.
is_shareable_relpath = is_safe_relpath


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    size: int
    mtime: float
    sha256: str
    #: The pieces root (p2pd.share.merkle, lowercase hex; None for an empty file) and the
    #: piece size its piece layer is cut at (0: not known, as in a test's own entry).
    root: str | None = None
    piece_size: int = 0
    #: Which file on disk was hashed (device, inode, mtime in ns): a file is
    #: served only while the one opened is still exactly this one.  Not listed.
    dev: int = 0
    ino: int = 0
    mtime_ns: int = 0

    def to_json(self) -> dict[str, object]:
        listed: dict[str, object] = {
            "path": self.path,
            "size": self.size,
            "mtime": self.mtime,
            "sha256": self.sha256,
        }
        if self.root is not None:
            listed["root"] = self.root
        if self.piece_size:
            listed["piece_size"] = self.piece_size
        return listed

    def listed(self) -> tuple[str, int, float, str, str | None, int]:
        """What peers see of this entry: a change here is a change of the listing."""
        return (self.path, self.size, self.mtime, self.sha256, self.root, self.piece_size)


class ShareIndex:
    def __init__(self) -> None:
        self._entries: dict[str, FileEntry] = {}
        self.generation = 0
        self._sorted: list[FileEntry] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, path: str) -> FileEntry | None:
        return self._entries.get(path)

    def listing(self) -> list[FileEntry]:
        if self._sorted is None:
            self._sorted = sorted(self._entries.values(), key=lambda e: e.path)
        return self._sorted

    def _changed(self) -> bool:
        self.generation += 1
        self._sorted = None
        return True

    def replace_all(self, entries: Iterable[FileEntry]) -> bool:
        """Make the index exactly ``entries``; True if the listing changed.

        Entries that differ only in what is not listed (say a file replaced by
        an identical copy) are taken, without a new generation.
        """
        fresh = {e.path: e for e in entries}
        if fresh == self._entries:
            return False
        listed_changed = fresh.keys() != self._entries.keys() or any(
            e.listed() != self._entries[p].listed() for p, e in fresh.items()
        )
        self._entries = fresh
        self._sorted = None
        return self._changed() if listed_changed else False

    def upsert_many(self, entries: Iterable[FileEntry]) -> bool:
        """Add or update entries (one batch of a scan); one generation for the batch."""
        listed_changed = False
        for entry in entries:
            old = self._entries.get(entry.path)
            if old == entry:
                continue
            self._entries[entry.path] = entry
            self._sorted = None
            listed_changed = listed_changed or old is None or old.listed() != entry.listed()
        return self._changed() if listed_changed else False
