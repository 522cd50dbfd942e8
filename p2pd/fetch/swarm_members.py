"""The members of one many-source download, as p2pd.fetch.swarm keeps them. Pure.

(Not to be confused with p2pd.sources, which finds the members that list a
content; this module keeps what one transfer learnt about each of them.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

#: A rate is never sampled over less busy time than this (two pieces landing together).
MIN_SAMPLE_SECONDS = 0.001


@dataclass(frozen=True)
class Request:
    """Piece ``piece`` (bytes ``[start, end)`` of the content) asked from member ``source``."""

    source: str
    piece: int
    start: int
    end: int


@dataclass(frozen=True)
class SourceReport:
    """What one member did for a transfer, for ``p2pctl downloads`` and the history."""

    id: str
    #: "active", "resting" (after a failure, until it may be asked again) or "dropped".
    state: str
    #: Why it is resting or dropped.
    reason: str | None
    #: Verified bytes and pieces it sent.
    bytes: int
    pieces: int
    #: Pieces that failed verification, and their bytes.
    bad_pieces: int
    wasted_bytes: int
    #: Verified bytes of pieces another member had already sent (the endgame's backups).
    duplicate_bytes: int
    #: Measured bytes per second while it had pieces in flight (None: none arrived yet).
    rate: float | None
    pieces_in_flight: int
    bytes_in_flight: int
    liar: bool

    def summary(self, name: str) -> dict[str, object]:
        """The ``sources`` entry of a fetch outcome and its history record."""
        return {
            "id": self.id,
            "name": name,
            "bytes": self.bytes,
            "bad_pieces": self.bad_pieces,
            "wasted_bytes": self.wasted_bytes,
            "state": self.state,
            "reason": self.reason,
        }


@dataclass(eq=False)
class Source:
    """One member's state in a transfer (Swarm keeps the pieces' side consistent)."""

    id: str
    joined_at: float
    #: Piece → when it was asked, in the order asked.
    in_flight: dict[int, float] = field(default_factory=dict)
    bytes_in_flight: int = 0
    rate: float | None = None
    #: When it last finished a piece, or started being busy.
    last_progress: float = 0.0
    busy_since: float = 0.0
    busy_total: float = 0.0
    #: Bytes since the last rate sample, and the busy time when that sample was taken.
    window_bytes: int = 0
    window_busy: float = 0.0
    pieces: int = 0
    bytes: int = 0
    bad_pieces: int = 0
    wasted_bytes: int = 0
    duplicate_bytes: int = 0
    failures: int = 0
    retry_at: float | None = None
    #: Pieces it may hold at once, once it answered 503 (busy) to one more (None: no cap).
    cap: int | None = None
    reason: str | None = None
    dropped: bool = False
    liar: bool = False

    def usable_now(self) -> bool:
        return not self.dropped and self.retry_at is None

    def busy_time(self, now: float) -> float:
        """Seconds it spent with at least one piece in flight."""
        return self.busy_total + (now - self.busy_since if self.in_flight else 0.0)

    def hold(self, piece: int, length: int, now: float) -> None:
        if not self.in_flight:
            self.busy_since = now
            self.last_progress = now
        self.in_flight[piece] = now
        self.bytes_in_flight += length

    def unhold(self, piece: int, length: int, now: float) -> None:
        del self.in_flight[piece]
        self.bytes_in_flight -= length
        if not self.in_flight:
            self.busy_total += now - self.busy_since

    def measure(self, nbytes: int, now: float, sample_seconds: float, weight: float) -> None:
        """Count ``nbytes`` that just arrived (before ``unhold``) into the rate's EWMA."""
        self.window_bytes += nbytes
        busy = self.busy_time(now) - self.window_busy
        if self.rate is not None and busy < sample_seconds:
            return
        sample = self.window_bytes / max(busy, MIN_SAMPLE_SECONDS)
        self.rate = sample if self.rate is None else self.rate + weight * (sample - self.rate)
        self.window_bytes = 0
        self.window_busy = self.busy_time(now)

    def eta(self, piece: int, length_of: Callable[[int], int]) -> float:
        """When it should have sent ``piece``, at its rate, after the pieces asked before."""
        if self.rate is None:
            return math.inf
        ahead = 0
        for asked in self.in_flight:
            ahead += length_of(asked)
            if asked == piece:
                break
        return self.last_progress + ahead / self.rate

    def report(self) -> SourceReport:
        if self.dropped:
            state = "dropped"
        elif self.retry_at is not None:
            state = "resting"
        else:
            state = "active"
        return SourceReport(
            id=self.id,
            state=state,
            reason=self.reason,
            bytes=self.bytes,
            pieces=self.pieces,
            bad_pieces=self.bad_pieces,
            wasted_bytes=self.wasted_bytes,
            duplicate_bytes=self.duplicate_bytes,
            rate=self.rate,
            pieces_in_flight=len(self.in_flight),
            bytes_in_flight=self.bytes_in_flight,
            liar=self.liar,
        )
