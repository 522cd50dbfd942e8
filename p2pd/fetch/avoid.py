"""Members to avoid for a content after they sent a piece that failed verification. Pure.

A member whose piece of a content failed its hash is not asked for that
content again for AVOID_SECONDS (an hour), by any transfer; other contents
may still come from it (its copy of one file may be damaged on disk, which
says nothing of the others).  ``now`` is a monotonic clock: the list is kept
in memory and forgotten at a restart.  At most ``capacity`` pairs are kept:
when more members lie than that, the ones avoided longest ago are forgotten
first (they would expire first anyway).
"""

from __future__ import annotations

from collections import OrderedDict

AVOID_SECONDS = 3600.0
CAPACITY = 10_000


class AvoidList:
    """(content sha256, member id) → until when that member is not asked for that content."""

    def __init__(self, capacity: int = CAPACITY, seconds: float = AVOID_SECONDS) -> None:
        if capacity < 1:
            raise ValueError(f"an avoid list holds at least one entry, not {capacity}")
        self.capacity = capacity
        self.seconds = seconds
        # Every entry lasts the same time, so insertion order is expiry order.
        self._until: OrderedDict[tuple[str, str], float] = OrderedDict()

    def avoid(self, content: str, member: str, now: float) -> float:
        """Avoid ``member`` for ``content`` from now on; answers until when."""
        self._expire(now)
        key = (content, member)
        self._until.pop(key, None)
        self._until[key] = until = now + self.seconds
        while len(self._until) > self.capacity:
            self._until.popitem(last=False)
        return until

    def until(self, content: str, member: str, now: float) -> float | None:
        """Until when ``member`` is avoided for ``content`` (None: it is not)."""
        self._expire(now)
        return self._until.get((content, member))

    def avoided(self, content: str, member: str, now: float) -> bool:
        return self.until(content, member, now) is not None

    def __len__(self) -> int:
        return len(self._until)

    def _expire(self, now: float) -> None:
        while self._until:
            key, until = next(iter(self._until.items()))
            if until > now:
                return
            del self._until[key]
