"""Replay cache and per-address failure limiter: pure, bounded, every call takes ``now``."""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque


class NonceCache:
    """Remembers nonces until the requests carrying them would be stale anyway.

    Only authenticated requests are recorded, so its size is bounded by the
    legitimate request rate times the freshness window; ``max_entries`` is a
    last line of defence that forgets the soonest-to-expire nonces first.
    """

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._max_entries = max_entries

    def __len__(self) -> int:
        return len(self._expiry)

    def check_and_add(self, nonce: str, expires_at: float, now: float) -> bool:
        """Record ``nonce``; False if it was already seen (a replay)."""
        self._purge(now)
        if nonce in self._expiry:
            return False
        while len(self._expiry) >= self._max_entries:
            _, oldest = heapq.heappop(self._heap)
            self._expiry.pop(oldest, None)
        self._expiry[nonce] = expires_at
        heapq.heappush(self._heap, (expires_at, nonce))
        return True

    def _purge(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] < now:
            _, nonce = heapq.heappop(heap)
            self._expiry.pop(nonce, None)


class FailureLimiter:
    """Counts failed requests per source address in a sliding window.

    After ``burst`` failures within ``window`` seconds an address is limited
    until its oldest failure in the window ages out.  Memory is bounded: at
    most ``burst`` timestamps for each of at most ``max_addresses`` addresses,
    the least recently failing address being forgotten first.
    """

    def __init__(self, burst: int = 20, window: float = 60.0, max_addresses: int = 10_000) -> None:
        self.burst = burst
        self.window = window
        self._max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def retry_after(self, address: str, now: float) -> int | None:
        """Whole seconds until ``address`` may fail again unthrottled, or None if it may now."""
        times = self._failures.get(address)
        if times is None or len(times) < self.burst:
            return None
        wait = times[0] + self.window - now
        return max(1, math.ceil(wait)) if wait > 0 else None

    def record_failure(self, address: str, now: float) -> None:
        times = self._failures.pop(address, None)
        if times is None:
            times = deque(maxlen=self.burst)
            while len(self._failures) >= self._max_addresses:
                self._failures.popitem(last=False)
        times.append(now)
        self._failures[address] = times
