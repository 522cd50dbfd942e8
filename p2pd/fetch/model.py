"""A download as data: what was asked (Queued), where it is (State, Progress), how it
ended (Outcome).  Pure: no I/O, no clock, no trio.

The history (``p2pd.fetch.history``) stores the records, the rules
(``p2pd.fetch.attempts``) decide, and a running transfer
(``p2pd.fetch.transfer``) holds them; all of them import these from here.

A transfer's states and the moves between them are one table, ``MOVES``, as
h11 keeps its connection states in ``_state.py``: a move the table lacks is
a bug of ours, and raises IllegalMove at once instead of showing a user a
state that cannot be.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


@dataclass(frozen=True)
class Queued:
    """A transfer as asked for: kept in the persisted queue until its outcome is recorded."""

    id: str
    peer_id: str
    peer_name: str
    remote_path: str
    sha256: str
    size: int
    started_at: float
    #: Where it lands under download_dir when not at ``remote_path`` (a fetch by
    #: sha256 given a name, or taking the most common one); "" otherwise.
    dest_name: str = ""


@dataclass(frozen=True)
class Outcome:
    """How a transfer (or a fetch refused before any began) ended: a history record."""

    id: str
    path: str
    remote_path: str
    peer_id: str
    peer_name: str
    sha256: str
    size: int
    status: str  # ok, failed or cancelled
    error: str | None
    started_at: float
    finished_at: float
    bytes_per_second: float
    #: ok without a transfer: the same content was at the destination already.
    already_there: bool = False
    #: The members that sent its bytes: each an object with OUTCOME_SOURCE_FIELDS.
    sources: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


#: What an outcome's ``sources`` says of each member (docs/protocol.md §6): its id and
#: name, the verified bytes it sent, its pieces that failed verification and their
#: bytes, and whether it was named a liar.
OUTCOME_SOURCE_FIELDS = ("id", "name", "bytes", "bad_pieces", "wasted_bytes", "liar")


class IllegalMove(Exception):
    """A transfer was moved from one state to another that ``MOVES`` does not allow:
    a bug of p2pd's (the transfer fails with it as an internal error)."""


class State(StrEnum):
    """What a transfer is doing; the value is what ``downloads --json`` shows."""

    QUEUED = "queued"
    CONNECTING = "connecting"
    DOWNLOADING = "downloading"
    WAITING = "waiting"
    PLACING = "placing"
    CANCELLING = "cancelling"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @classmethod
    def ended(cls, status: str) -> State:
        """The last state of a transfer whose outcome has ``status`` (ok, failed, cancelled)."""
        return cls.DONE if status == "ok" else cls(status)

    @property
    def joinable(self) -> bool:
        """Another fetch of the same file to the same place may share this transfer."""
        return self in _JOINABLE

    @property
    def finished(self) -> bool:
        """done, failed or cancelled: no move leads out of it."""
        return not MOVES[self]

    def to(self, new: State) -> State:
        """``new``, if a transfer in this state may move there; else IllegalMove."""
        if new not in MOVES[self]:
            raise IllegalMove(f"a transfer cannot go from {self.value} to {new.value}")
        return new


_S = State
_ENDS = frozenset({_S.DONE, _S.FAILED, _S.CANCELLED})
#: The ways a transfer stops short of success.
_STOPPING = frozenset({_S.CANCELLING, _S.FAILED, _S.CANCELLED})

#: Every move a transfer may make.  One whose bytes are at its destination
#: already is done at once.  An attempt goes connecting → downloading → placing
#: (connecting → placing when every byte is on disk already, from before a
#: restart); a failed attempt goes on to the next member (connecting) or, its
#: round over, waits (waiting; also after a round that found no member to ask).
#: A cancel is taken at once (cancelling), but the transfer's task may still
#: report the step it was in before it notices, or end as it was about to (a
#: file being placed is placed: done); only an outcome ends a transfer.
MOVES: dict[State, frozenset[State]] = {
    _S.QUEUED: frozenset({_S.CONNECTING, _S.WAITING, _S.DONE}) | _STOPPING,
    _S.CONNECTING: frozenset({_S.CONNECTING, _S.DOWNLOADING, _S.PLACING, _S.WAITING}) | _STOPPING,
    _S.DOWNLOADING: frozenset({_S.CONNECTING, _S.PLACING, _S.WAITING}) | _STOPPING,
    _S.PLACING: frozenset({_S.CONNECTING, _S.WAITING, _S.DONE}) | _STOPPING,
    _S.WAITING: frozenset({_S.CONNECTING, _S.WAITING}) | _STOPPING,
    _S.CANCELLING: frozenset({_S.CONNECTING, _S.DOWNLOADING, _S.PLACING, _S.WAITING}) | _ENDS,
    _S.DONE: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
}

_JOINABLE = frozenset({_S.QUEUED, _S.CONNECTING, _S.DOWNLOADING, _S.WAITING, _S.PLACING})


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
