"""The share's index: which files are shared, with size, mtime and sha256. Pure, no I/O.

Its ``generation`` bumps on every change of the listing, and on nothing else,
so peers can cache a listing by ETag and tests can wait for a change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    size: int
    mtime: float
    sha256: str

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "size": self.size, "mtime": self.mtime, "sha256": self.sha256}


def is_shareable_relpath(path: str) -> bool:
    """A relative '/'-separated path with no hidden, empty, '.' or '..' component."""
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return False
    return all(part and not part.startswith(".") for part in path.split("/"))


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

    def by_sha256(self, sha256: str) -> list[FileEntry]:
        return [e for e in self.listing() if e.sha256 == sha256]

    def _changed(self) -> bool:
        self.generation += 1
        self._sorted = None
        return True

    def replace_all(self, entries: Iterable[FileEntry]) -> bool:
        fresh = {e.path: e for e in entries}
        if fresh == self._entries:
            return False
        self._entries = fresh
        return self._changed()

    def upsert(self, entry: FileEntry) -> bool:
        if self._entries.get(entry.path) == entry:
            return False
        self._entries[entry.path] = entry
        return self._changed()

    def remove(self, path: str) -> bool:
        if self._entries.pop(path, None) is None:
            return False
        return self._changed()

    def remove_tree(self, prefix: str) -> bool:
        """Remove every file under the folder ``prefix`` (moved away or deleted)."""
        inside = [p for p in self._entries if p.startswith(prefix.rstrip("/") + "/")]
        for path in inside:
            del self._entries[path]
        return self._changed() if inside else False
