"""Pure pieces of a download: where its bytes go, free names, progress and rate, the record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import trio

from p2pd.fetch.attempts import State
from p2pd.fetch.history import Outcome, Queued
from p2pd.share.index import is_shareable_relpath

PARTIAL_SUFFIX = ".p2pd-partial"
#: The longest file name, in bytes, that Linux file systems take (ext4, xfs, btrfs, tmpfs).
NAME_MAX = 255


def partial_name(sha256: str) -> str:
    """Hidden, named by content: a resume may come from any member listing the same bytes."""
    return f".{sha256}{PARTIAL_SUFFIX}"


def partial_path(download_dir: Path, sha256: str) -> Path:
    return download_dir / partial_name(sha256)


def destination(download_dir: Path, remote_path: str) -> Path:
    """``download_dir/<remote path>``; ValueError for a path that could leave the folder."""
    if not is_shareable_relpath(remote_path):
        raise ValueError(f"{remote_path!r} is not a plain relative path")
    return download_dir.joinpath(*PurePosixPath(remote_path).parts)


def _byte_length(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def _cut(text: str, budget: int) -> str:
    """The longest start of ``text`` of at most ``budget`` UTF-8 bytes, whole characters only."""
    used = 0
    for index, char in enumerate(text):
        used += _byte_length(char)
        if used > budget:
            return text[:index]
    return text


def numbered(path: Path, number: int) -> Path:
    """``name (N).ext`` beside ``path``.

    A name may have at most NAME_MAX bytes: where ``name (N).ext`` would be
    longer, the stem is shortened (whole characters, the suffix kept), so that
    a long name that is taken still gets a free one instead of ENAMETOOLONG.
    """
    if number == 0:
        return path
    suffix = "".join(path.suffixes[-1:])
    tail = f" ({number}){suffix}"
    if _byte_length(tail) >= NAME_MAX:  # no room for any stem: the suffix goes too
        suffix, tail = "", f" ({number})"
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(_cut(stem, NAME_MAX - _byte_length(tail)) + tail)


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


@dataclass
class Transfer:
    """One transfer as the control socket shows it; ``p2pd.fetch.downloads`` runs it."""

    queued: Queued
    dest: Path
    progress: Progress
    state: State = State.QUEUED
    #: The member of the current (last) attempt: not always the one asked first.
    peer_id: str = ""
    peer_name: str = ""
    done: trio.Event = field(default_factory=trio.Event)
    outcome: Outcome | None = None
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    #: What another fetch joins: the same bytes asked for at the same destination.
    key: tuple[str, Path] | None = None

    @property
    def shown_state(self) -> State:
        """``cancelling`` from the cancel on, whatever the task still sets meanwhile."""
        if self.cancel_scope.cancel_called and self.state.joinable:
            return State.CANCELLING
        return self.state

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.queued.id,
            "path": str(self.dest),
            "remote_path": self.queued.remote_path,
            "peer_id": self.peer_id or self.queued.peer_id,
            "size": self.queued.size,
            "bytes_done": self.progress.bytes_done,
            "state": self.shown_state.value,
            "rate": round(self.progress.rate),
        }

    def end(
        self,
        status: str,
        error: str | None,
        finished: float,
        *,
        recorded: bool,
        already_there: bool = False,
    ) -> Outcome:
        """Take the last state and the outcome (``status``: ok, failed or cancelled)."""
        queued = self.queued
        elapsed = max(finished - queued.started_at, 1e-6)
        self.state = State.ended(status)
        self.outcome = Outcome(
            id=queued.id,
            path=str(self.dest),
            remote_path=queued.remote_path,
            peer_id=self.peer_id or queued.peer_id,
            peer_name=self.peer_name or queued.peer_name,
            sha256=queued.sha256,
            size=queued.size,
            status=status,
            error=error,
            started_at=queued.started_at,
            finished_at=finished,
            bytes_per_second=self.progress.bytes_done / elapsed if recorded else 0.0,
            already_there=already_there,
        )
        return self.outcome
