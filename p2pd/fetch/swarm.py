"""One download from several members at once: which member sends which piece, when. Pure.

A :class:`Swarm` is the schedule of one content's pieces (its size and piece
size, laid out as in p2pd.share.merkle, which this room does not import).
The I/O side tells it what happens, with the time (``now``: monotonic
seconds), and does what it answers:

- ``add_source(id, now)``: a member that lists the content (found at the
  start or during the transfer: it joins);
- ``next_requests(id, now)``: the pieces to ask that member for now (``[]``:
  nothing for it now; ask again after the transfer's next event);
- ``piece_done(id, piece, ok, nbytes, now)``: a piece arrived and was checked
  against its hash (``ok``) or failed the check;
- ``source_failed(id, reason, now)``: the member refused, disconnected or
  timed out (``final=True``: it no longer has the content);
- ``stalled(now)``: call every few seconds.

Every event answers the requests the I/O side must cancel (each a
:class:`Request`): the other holder of a piece that just verified, the
pieces in flight at a member that was dropped, failed or stalled.

Policy, and why:

- **One member per piece at a time**, so that a piece that fails its hash
  names its sender.  The one exception is the *endgame*: once every missing
  piece is in flight, an idle member whose measured rate would finish a piece
  before its holder (or whose holder is overdue) may take that piece as a
  backup, one at a time (the piece whose holder would finish last first), and
  a piece has one backup at most; whichever copy verifies first wins, the
  other is cancelled.
- **Random order** (the given rng), so that members of a swarm hold
  different pieces; a piece given back is asked again first.
- **In flight**: a member whose rate is not measured yet gets 2 pieces; then
  enough for QUEUE_SECONDS of its rate (so that the next request is queued
  before the current one ends, hiding a round trip up to about a second),
  from 2 to MAX_IN_FLIGHT pieces and at most MAX_BYTES_IN_FLIGHT.  Faster
  members thus hold more and, asking again as each piece lands, get more.
- **No slow tail**: a member with a measured rate does not take a piece when
  the others, at their rates and after the pieces they hold, would finish
  every piece not yet asked for before it would finish that one (by a margin
  of TAIL_MARGIN); it waits, and may become a backup in the endgame.  The
  member that would finish a piece first always takes it.
- **Rate**: an EWMA (weight RATE_WEIGHT) of bytes per second of busy time
  (time with a piece in flight), sampled over at least SAMPLE_SECONDS.
- **Liars**: a piece that fails its hash drops its member from this transfer
  at once (``liar``; never taken back, see p2pd.fetch.avoid for the hour
  after); its bytes count as wasted, its other pieces go back.
- **Failures**: a member that fails rests 5 s, then 30 s, and is dropped at
  its third failure in a row (a verified piece resets the count);
  ``add_source`` takes a dropped member back unless it lied.
- **Busy**: a member that answers 503 (its upload slots are taken, or the
  share one member may hold) is not failing: the piece goes back and the
  member keeps at most the pieces it still has in flight (at least one);
  with none left, it rests BUSY_REST seconds, without counting a failure.
- **Stalls**: a member with pieces in flight and no piece done for
  max(STALL_FLOOR, STALL_FACTOR × a piece at its rate) (STALL_FIRST before its
  rate is known) has failed, its pieces go back, but only when another member
  could take them: a lone member is never stalled out (the connection's own
  read deadline guards it).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

from p2pd.fetch.swarm_members import Request, Source, SourceReport

QUEUE_SECONDS = 2.0
PROBE_IN_FLIGHT = 2
MIN_IN_FLIGHT = 2
MAX_IN_FLIGHT = 16
MAX_BYTES_IN_FLIGHT = 8 * 1024 * 1024
TAIL_MARGIN = 0.2
RATE_WEIGHT = 0.3
SAMPLE_SECONDS = 0.25
STALL_FLOOR = 15.0
STALL_FACTOR = 4.0
STALL_FIRST = 60.0
RETRY_DELAYS = (5.0, 30.0)
MAX_FAILURES = len(RETRY_DELAYS) + 1
#: Seconds a member whose every upload slot was busy rests before being asked again.
BUSY_REST = 1.0
#: Members that may take part in one transfer (each one's state is a few hundred bytes).
MAX_SOURCES = 256

__all__ = ["Request", "SourceReport", "Swarm"]


class Swarm:
    """The schedule of one content's pieces across the members that have it."""

    def __init__(
        self, size: int, piece_size: int, rng: random.Random, verified: Iterable[int] = ()
    ) -> None:
        if size < 0 or piece_size <= 0:
            raise ValueError(f"no pieces of {piece_size} bytes in a content of {size} bytes")
        self.size = size
        self.piece_size = piece_size
        self.count = -(-size // piece_size)
        self._verified: set[int] = set()
        self._bytes_verified = 0
        for piece in verified:
            self._check(piece)
            if piece not in self._verified:
                self._verified.add(piece)
                self._bytes_verified += self.length(piece)
        self._queue = [piece for piece in range(self.count) if piece not in self._verified]
        rng.shuffle(self._queue)
        self._queued = set(self._queue)
        self._holders: dict[int, dict[str, float]] = {}
        self._sources: dict[str, Source] = {}

    # -- what the I/O side reads ---------------------------------------------------------

    def range(self, piece: int) -> tuple[int, int]:
        """The bytes ``[start, end)`` of ``piece`` (the last piece may be shorter)."""
        self._check(piece)
        start = piece * self.piece_size
        return start, min(start + self.piece_size, self.size)

    def length(self, piece: int) -> int:
        start, end = self.range(piece)
        return end - start

    @property
    def complete(self) -> bool:
        return len(self._verified) == self.count

    @property
    def bytes_verified(self) -> int:
        return self._bytes_verified

    @property
    def pieces_verified(self) -> int:
        return len(self._verified)

    @property
    def wasted_bytes(self) -> int:
        """Bytes of pieces that failed their hash."""
        return sum(source.wasted_bytes for source in self._sources.values())

    def is_verified(self, piece: int) -> bool:
        return piece in self._verified

    def holders(self, piece: int) -> list[str]:
        """The members piece ``piece`` is asked from now (two at most: the endgame's backup)."""
        return list(self._holders.get(piece, ()))

    def in_flight(self, source_id: str) -> list[int]:
        """The pieces asked from ``source_id`` and not in yet, in the order they were asked."""
        return list(self._source(source_id).in_flight)

    def sources(self) -> list[SourceReport]:
        """Every member that took part, in the order they joined (for downloads and history)."""
        return [source.report() for source in self._sources.values()]

    def liars(self) -> list[str]:
        """The members that sent a piece that failed its hash."""
        return [source.id for source in self._sources.values() if source.liar]

    def usable(self) -> bool:
        """True while some member can still send pieces (now or after a rest)."""
        return any(not source.dropped for source in self._sources.values())

    def next_retry(self) -> float | None:
        """When the first resting member may be asked again (None: none is resting)."""
        times = [s.retry_at for s in self._sources.values() if s.retry_at is not None]
        return min(times, default=None)

    # -- events ----------------------------------------------------------------------------

    def add_source(self, source_id: str, now: float) -> bool:
        """A member that lists the content joins; False if it lied earlier in this transfer,
        or if MAX_SOURCES members already took part."""
        source = self._sources.get(source_id)
        if source is None:
            if len(self._sources) >= MAX_SOURCES:
                return False
            self._sources[source_id] = Source(source_id, joined_at=now)
            return True
        if source.liar:
            return False
        if source.dropped:
            source.dropped, source.failures, source.reason = False, 0, None
        return True

    def next_requests(self, source_id: str, now: float) -> list[Request]:
        """The pieces to ask ``source_id`` for now, in order (usually none, one or a few)."""
        source = self._source(source_id)
        if self.complete or source.dropped:
            return []
        if source.retry_at is not None:
            if now < source.retry_at:
                return []
            source.retry_at, source.reason = None, None
        room = self._target(source) - len(source.in_flight)
        room = min(room, (MAX_BYTES_IN_FLIGHT - source.bytes_in_flight) // self.piece_size)
        asked: list[Request] = []
        while room > 0 and (piece := self._peek()) is not None and self._worth(source, piece):
            self._queue.pop()
            self._queued.discard(piece)
            asked.append(self._assign(source, piece, now))
            room -= 1
        if not asked and not source.in_flight and self._peek() is None:
            backup = self._backup_for(source, now)
            if backup is not None:
                asked.append(self._assign(source, backup, now))
        return asked

    def piece_done(
        self, source_id: str, piece: int, ok: bool, nbytes: int, now: float
    ) -> list[Request]:
        """A piece from ``source_id`` arrived: verified (``ok``) or not."""
        source = self._source(source_id)
        self._check(piece)
        if not ok:
            source.bad_pieces += 1
            source.wasted_bytes += nbytes
            self._unhold(source, piece, now)
            self._give_back(piece)
            if source.liar:
                return []
            source.liar = True
            return self._drop(source, f"sent piece {piece}, which failed verification", now)
        if piece in source.in_flight:
            source.measure(nbytes, now, SAMPLE_SECONDS, RATE_WEIGHT)
            self._unhold(source, piece, now)
        source.last_progress = now
        if piece in self._verified:
            source.duplicate_bytes += nbytes
            return []
        self._verified.add(piece)
        self._bytes_verified += self.length(piece)
        self._queued.discard(piece)
        source.pieces += 1
        source.bytes += nbytes
        source.failures = 0
        cancels = []
        for other_id in list(self._holders.get(piece, ())):
            other = self._sources[other_id]
            self._unhold(other, piece, now)
            cancels.append(self._request(other_id, piece))
        return cancels

    def source_failed(
        self, source_id: str, reason: str, now: float, *, final: bool = False
    ) -> list[Request]:
        """``source_id`` refused, disconnected or timed out: its pieces go back."""
        source = self._source(source_id)
        cancels = self._release(source, now)
        if source.dropped:
            return cancels
        source.failures += 1
        if final or source.failures >= MAX_FAILURES:
            source.dropped = True
            source.retry_at = None
            source.reason = reason if final else f"{reason} ({source.failures} times in a row)"
        else:
            source.retry_at = now + RETRY_DELAYS[source.failures - 1]
            source.reason = reason
        return cancels

    def source_busy(self, source_id: str, piece: int, now: float) -> None:
        """``source_id`` answered 503 for ``piece``: it has no slot for more pieces now.
        The piece goes back; the member keeps at most what it still has in flight."""
        source = self._source(source_id)
        self._check(piece)
        self._unhold(source, piece, now)
        self._give_back(piece)
        source.cap = max(1, len(source.in_flight))
        if not source.in_flight and not source.dropped:
            source.retry_at = now + BUSY_REST
            source.reason = "busy: every upload slot it gives us is taken"

    def stalled(self, now: float) -> list[Request]:
        """Members whose pieces stopped coming fail, if another member could take over."""
        cancels: list[Request] = []
        for source in list(self._sources.values()):
            if not source.in_flight or not self._has_competitor(source):
                continue
            if source.rate is None:
                allowed = STALL_FIRST
            else:
                allowed = max(STALL_FLOOR, STALL_FACTOR * self.piece_size / source.rate)
            quiet = now - source.last_progress
            if quiet > allowed:
                cancels += self.source_failed(source.id, f"stalled: no piece in {quiet:.0f} s", now)
        return cancels

    # -- the rules -------------------------------------------------------------------------

    def _target(self, source: Source) -> int:
        if source.rate is None:
            target = PROBE_IN_FLIGHT
        else:
            wanted = math.ceil(source.rate * QUEUE_SECONDS / self.piece_size)
            target = max(MIN_IN_FLIGHT, min(MAX_IN_FLIGHT, wanted))
        return target if source.cap is None else min(target, source.cap)

    def _worth(self, source: Source, piece: int) -> bool:
        """Whether ``source`` should take ``piece``: not when the others, at their rates and
        after what they hold, would finish every piece not yet asked for clearly sooner.

        The member that would finish a piece first always takes it, so some member always
        does (the margin keeps members of about equal rates from all deferring)."""
        if source.rate is None:
            return True
        length = self.length(piece)
        deadline = (source.bytes_in_flight + length) / source.rate / (1 + TAIL_MARGIN)
        sooner = 0
        for other in self._sources.values():
            if other is source or other.rate is None or not other.usable_now():
                continue
            # Pieces ``other`` would finish before the deadline, after those it holds.
            sooner += max(
                0, math.ceil((deadline * other.rate - other.bytes_in_flight) / length) - 1
            )
            if sooner >= len(self._queued):
                return False
        return True

    def _backup_for(self, source: Source, now: float) -> int | None:
        """The endgame: the outstanding piece whose holder would finish last, if ``source``
        would finish it sooner."""
        if source.rate is None:
            return None
        chosen, latest = None, -math.inf
        for piece, holders in self._holders.items():
            if len(holders) != 1 or source.id in holders:
                continue
            (holder_id,) = holders
            eta = self._sources[holder_id].eta(piece, self.length)
            if eta <= now:
                eta = math.inf  # overdue: its holder's rate no longer predicts anything
            mine = now + self.length(piece) / source.rate
            if mine < eta and eta > latest:
                chosen, latest = piece, eta
        return chosen

    def _has_competitor(self, source: Source) -> bool:
        return any(other is not source and not other.dropped for other in self._sources.values())

    # -- book-keeping ------------------------------------------------------------------------

    def _source(self, source_id: str) -> Source:
        try:
            return self._sources[source_id]
        except KeyError:
            raise KeyError(
                f"{source_id} is not a source of this transfer: add_source first"
            ) from None

    def _check(self, piece: int) -> None:
        if not 0 <= piece < self.count:
            raise IndexError(f"piece {piece} is outside this content's {self.count} pieces")

    def _request(self, source_id: str, piece: int) -> Request:
        return Request(source_id, piece, *self.range(piece))

    def _peek(self) -> int | None:
        """The next piece to ask for (the end of the shuffled queue); drops stale entries."""
        while self._queue and self._queue[-1] not in self._queued:
            self._queue.pop()
        return self._queue[-1] if self._queue else None

    def _assign(self, source: Source, piece: int, now: float) -> Request:
        source.hold(piece, self.length(piece), now)
        self._holders.setdefault(piece, {})[source.id] = now
        return self._request(source.id, piece)

    def _unhold(self, source: Source, piece: int, now: float) -> None:
        if piece not in source.in_flight:
            return
        source.unhold(piece, self.length(piece), now)
        holders = self._holders[piece]
        del holders[source.id]
        if not holders:
            del self._holders[piece]

    def _give_back(self, piece: int) -> None:
        if piece in self._verified or piece in self._holders or piece in self._queued:
            return
        self._queue.append(piece)
        self._queued.add(piece)

    def _release(self, source: Source, now: float) -> list[Request]:
        cancels = []
        for piece in list(source.in_flight):
            self._unhold(source, piece, now)
            self._give_back(piece)
            cancels.append(self._request(source.id, piece))
        return cancels

    def _drop(self, source: Source, reason: str, now: float) -> list[Request]:
        source.dropped = True
        source.retry_at = None
        source.reason = reason
        return self._release(source, now)
