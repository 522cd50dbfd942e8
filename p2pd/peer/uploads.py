"""Sharing the upload slots fairly: a share per member, and a pace floor while others wait.

Without these, one member with eight slow connections (each 512 KiB block
only has to go within the 30 s write deadline: ~17 KiB/s) held every slot
for as long as its downloads lasted, and everyone else got ``503 busy``.

- **A share per member.**  A member may hold ``member_share`` slots
  (a quarter of them, at least one); beyond that it takes a slot only while
  as many stay free for the others.  Alone, a member still uses most slots.
- **A pace floor.**  While someone waits for a slot (or was refused one in
  the last ``window`` seconds), an upload that sent less than ``floor``
  bytes/s over its last ``window`` seconds is ended; the slot goes to
  someone who reads.  The pace counts the time spent waiting for the
  client only: waits for the configured ``upload_rate_limit`` are ours, so
  a limit that makes every upload slow ends none of them.

The rules here are pure (the wait for a slot is ``p2pd.peer.slots``');
p2pd.peer.server applies them to both ways a body is sent (through h11, and
by worker threads).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field

#: An upload under this pace over the window is ended while others wait for a slot.
MIN_UPLOAD_RATE = 64 * 1024
PACE_WINDOW = 30.0
#: Pace samples are kept at most this often (they bound the window's precision).
SAMPLE_EVERY = 1.0

BUSY = "busy"
BUSY_FOR_YOU = "busy for you"


def member_share(slots: int) -> int:
    """The slots one member may hold while others may want them."""
    return max(1, slots // 4)


class SlotCount:
    """Who holds the upload slots, how many wait for one, and the rule for taking one.

    ``p2pd.peer.slots.UploadSlots`` adds the wait; these are the rules alone.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.member_share = member_share(total)
        self.active = 0
        self._held: Counter[str] = Counter()
        #: Requests waiting for a slot now; when one was last refused (the server's clock).
        self.waiting = 0
        self.last_refused = -math.inf

    def held_by(self, member: str) -> int:
        return self._held[member]

    def refusal(self, member: str) -> str | None:
        """Why ``member`` may not take a slot now (BUSY, BUSY_FOR_YOU), or None."""
        free = self.total - self.active
        if free <= 0:
            return BUSY
        if self._held[member] >= self.member_share and free - 1 < self.member_share:
            return BUSY_FOR_YOU  # what is free is kept for the others
        return None

    def take(self, member: str) -> None:
        """``member`` holds one more slot (its ``refusal`` was None)."""
        self._held[member] += 1
        self.active += 1

    def give_back(self, member: str) -> None:
        self._held[member] -= 1
        if self._held[member] <= 0:
            del self._held[member]
        self.active -= 1

    def contended(self, now: float, window: float) -> bool:
        """Someone waits for a slot, or was refused one within ``window`` seconds."""
        return self.waiting > 0 or now - self.last_refused < window


@dataclass
class UploadPace:
    """One upload's pace over its last ``window`` seconds of waiting for the client.

    Time is counted from ``start``, minus what ``ours`` was given: the waits
    that are the server's own (the rate limiter, reading the file).
    """

    start: float
    window: float = PACE_WINDOW
    sent: int = 0
    #: Seconds of the server's own waits so far, and when the current one began.
    ours: float = 0.0
    ours_since: float | None = None
    #: (client time, bytes sent by then), oldest first; about one a second.
    _samples: deque[tuple[float, int]] = field(default_factory=lambda: deque([(0.0, 0)]))

    def client_time(self, now: float) -> float:
        waiting = 0.0 if self.ours_since is None else now - self.ours_since
        return now - self.start - self.ours - waiting

    def our_wait(self, now: float) -> None:
        """The server waits (for the rate limit, the disk) from ``now`` on."""
        self.ours_since = now

    def client_again(self, now: float) -> None:
        """The server's wait is over: time is the client's again."""
        if self.ours_since is not None:
            self.ours += now - self.ours_since
            self.ours_since = None

    def add(self, count: int, now: float) -> None:
        self.sent += count
        self._sample(now)

    def _sample(self, now: float) -> None:
        at = self.client_time(now)
        if at - self._samples[-1][0] >= SAMPLE_EVERY:
            self._samples.append((at, self.sent))
        # Keep one sample at or before the window's start, none older.
        while len(self._samples) > 1 and self._samples[1][0] <= at - self.window:
            self._samples.popleft()

    def rate(self, now: float) -> float | None:
        """Bytes/s over the last window (at least ``window`` long); None before one passed."""
        self._sample(now)
        at = self.client_time(now)
        since, sent_then = self._samples[0]
        if at < self.window or at - since < self.window:
            return None
        return (self.sent - sent_then) / (at - since)
