"""Is the store answering?  Pure state, fed with the outcome of each store call.

Every call reports when it started and how it ended.  Only the first failure
after a healthy spell and the first success after an outage change the state,
so that the caller logs one line per change, never one per request; and a
call that started before the last change says nothing about the store since
then (a slow answer that began before Redis died is no sign that it is back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class StoreHealth:
    available: bool = True
    #: Why the store is unavailable (the last error seen); empty while it answers.
    reason: str = ""
    #: When the current state began, on the caller's clock; -inf: since the start.
    since: float = -math.inf

    def failed(self, reason: str, started: float, now: float) -> bool:
        """Record a failed call; True if this one makes the store unavailable."""
        if not self.available:
            self.reason = reason  # the latest error is the best explanation
            return False
        if started < self.since:
            return False
        self.available, self.reason, self.since = False, reason, now
        return True

    def succeeded(self, started: float, now: float) -> float | None:
        """Record a successful call; the outage's length if this one ends it, else None."""
        if self.available or started < self.since:
            return None
        outage = now - self.since
        self.available, self.reason, self.since = True, "", now
        return outage
