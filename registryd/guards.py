"""Replay cache, per-address failure limiter and load shedder: pure and bounded."""

from __future__ import annotations

import heapq
import math
import random
from collections import OrderedDict, deque

#: Requests one process works on at once before it turns new ones away.
DEFAULT_MAX_IN_PROGRESS = 256
#: Seconds a turned-away client is told to wait: drawn anew for each answer.
SHED_RETRY_AFTER = (2, 6)


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


class LoadShedder:
    """Turns requests away while this process has too many in progress.

    Past ``max_in_progress`` the queue (requests that arrived and wait for
    the CPU or the store) would only grow, each answer later than the last,
    until clients time out and come back at once.  An early 503 costs no
    signature check and no store call, and its ``Retry-After`` is drawn at
    random from ``retry_after`` so that the clients turned away together do
    not return together.
    """

    def __init__(
        self,
        max_in_progress: int = DEFAULT_MAX_IN_PROGRESS,
        retry_after: tuple[int, int] = SHED_RETRY_AFTER,
        rng: random.Random | None = None,
    ) -> None:
        self.max_in_progress = max_in_progress
        self._retry_after = retry_after
        self._rng = rng or random.Random()

    def retry_after(self, in_progress: int) -> int | None:
        """Whole seconds to tell the client to wait, or None to serve the request."""
        if in_progress <= self.max_in_progress:
            return None
        return self._rng.randint(*self._retry_after)


#: New ids one source may register at once, then how many a second (docs/protocol.md §3.2).
NEW_MEMBER_BURST = 60
NEW_MEMBER_RATE = 1.0
#: Lookups (a member, a resolution, a page, the list) one source may make at once, then
#: how many a second (docs/protocol.md §3.4).
LOOKUP_BURST = 300
LOOKUP_RATE = 100.0


class SourceBuckets:
    """How fast one source may do something: a token bucket per source.

    ``source`` is an ``address_key`` (IPv4 /32, IPv6 /64): one party cannot
    bring more buckets by taking more addresses of its own network.  Memory is
    bounded: at most ``max_sources`` buckets, the least recently used
    forgotten first (a forgotten bucket starts full again).  ``rate`` 0 turns
    the limit off.
    """

    def __init__(self, burst: int, rate: float, max_sources: int = 10_000) -> None:
        self.burst = burst
        self.rate = rate
        self._max_sources = max_sources
        #: source -> [tokens, when they were counted]
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, source: str, now: float) -> list[float]:
        bucket = self._buckets.pop(source, None)
        if bucket is None:
            bucket = [float(self.burst), now]
            while len(self._buckets) >= self._max_sources:
                self._buckets.popitem(last=False)
        else:
            elapsed = max(0.0, now - bucket[1])
            bucket[0] = min(float(self.burst), bucket[0] + elapsed * self.rate)
            bucket[1] = now
        self._buckets[source] = bucket
        return bucket

    def try_take(self, source: str, now: float) -> bool:
        """Take a token for ``source``; False if there is none now."""
        if self.rate <= 0:
            return True
        bucket = self._bucket(source, now)
        if bucket[0] < 1:
            return False
        bucket[0] -= 1
        return True

    def give_back(self, source: str, now: float) -> None:
        """Return the token of an action that turned out not to need one."""
        if self.rate > 0:
            bucket = self._bucket(source, now)
            bucket[0] = min(float(self.burst), bucket[0] + 1)

    def retry_after(self, source: str, now: float) -> int:
        """Whole seconds until ``source`` has a token again (at least 1)."""
        if self.rate <= 0:
            return 1
        missing = 1 - self._bucket(source, now)[0]
        return max(1, math.ceil(missing / self.rate))


class NewMemberLimiter(SourceBuckets):
    """How fast new ids may join from one source.

    A register of an id that is not a live member takes a token; renewing an
    existing member's record takes none, so members that are known are never
    slowed.
    """

    def __init__(
        self,
        burst: int = NEW_MEMBER_BURST,
        rate: float = NEW_MEMBER_RATE,
        max_sources: int = 10_000,
    ) -> None:
        super().__init__(burst, rate, max_sources)


class LookupLimiter(SourceBuckets):
    """How fast one source may look members up (every GET route but the unsigned two).

    Checked before the signature, like the load shedder: a flood from one
    address costs an early 429 each, and the others keep their share of the
    process (docs/protocol.md §3.6).
    """

    def __init__(
        self, burst: int = LOOKUP_BURST, rate: float = LOOKUP_RATE, max_sources: int = 10_000
    ) -> None:
        super().__init__(burst, rate, max_sources)
