"""Pure pieces of a download: where its bytes go, free names, progress and rate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from p2pd.index import is_shareable_relpath

PARTIAL_SUFFIX = ".p2pd-partial"


def partial_path(download_dir: Path, sha256: str) -> Path:
    """Hidden, named by content: a resume may come from any member listing the same bytes."""
    return download_dir / f".{sha256}{PARTIAL_SUFFIX}"


def destination(download_dir: Path, remote_path: str) -> Path:
    """``download_dir/<remote path>``; ValueError for a path that could leave the folder."""
    if not is_shareable_relpath(remote_path):
        raise ValueError(f"{remote_path!r} is not a plain relative path")
    return download_dir.joinpath(*PurePosixPath(remote_path).parts)


def numbered(path: Path, number: int) -> Path:
    """``name (N).ext`` beside ``path``."""
    if number == 0:
        return path
    suffix = "".join(path.suffixes[-1:])
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(f"{stem} ({number}){suffix}")


def free_name(path: Path, taken: Callable[[Path], bool]) -> Path:
    number = 0
    while taken(numbered(path, number)):
        number += 1
    return numbered(path, number)


@dataclass
class Progress:
    """Bytes done and a smoothed rate; ``now`` comes from the caller (pure)."""

    size: int
    bytes_done: int = 0
    rate: float = 0.0
    _last: tuple[float, int] | None = field(default=None, repr=False)

    def update(self, bytes_done: int, now: float) -> None:
        self.bytes_done = bytes_done
        if self._last is None:
            self._last = (now, bytes_done)
            return
        then, before = self._last
        if now - then >= 0.5:
            instant = (bytes_done - before) / (now - then)
            self.rate = instant if self.rate == 0 else 0.7 * instant + 0.3 * self.rate
            self._last = (now, bytes_done)
