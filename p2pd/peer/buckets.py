"""Token buckets per key, bounded in memory: pure (takes ``now``).

The search route's per-member limit (p2pd.peer.search) and the handshake's
per-address limit on SNI lookups (p2pd.peer.handshake) are both this.
"""

from __future__ import annotations

from collections import OrderedDict


class KeyedBuckets:
    """A token bucket per key (a member's id, a client's address): ``rate`` a second,
    bursts of ``burst``.

    Memory is bounded: at most ``max_members`` buckets, the least recently
    used one dropped first.  A dropped bucket was, in practice, full again (a
    bucket refills in ``burst / rate`` seconds), and a full bucket is what an
    unknown member gets: dropping it forgets nothing.  Only when more than
    ``max_members`` members search within that time does one get a fresh
    burst early.  A refused search costs nothing: no debt.
    """

    def __init__(self, rate: float, burst: int, max_members: int = 4096) -> None:
        if rate <= 0 or burst < 1 or max_members < 1:
            raise ValueError("rate, burst and max_members must be positive")
        self.rate = rate
        self.burst = burst
        self.max_members = max_members
        #: key -> (tokens, when they were counted); most recently used last.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def admit(self, member_id: str, now: float) -> float:
        """0.0 if ``member_id`` (any key) may go on now (a token is taken), else seconds
        to wait."""
        tokens, since = self._buckets.pop(member_id, (float(self.burst), now))
        # A clock that steps back refills nothing (and takes nothing back).
        tokens = min(float(self.burst), tokens + max(0.0, now - since) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[member_id] = (tokens, max(now, since))
        while len(self._buckets) > self.max_members:
            self._buckets.popitem(last=False)
        return wait
