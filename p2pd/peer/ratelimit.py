"""Token buckets: one shared by all uploads (``rate`` bytes/s overall, bursts of ``burst``),
and allowances that refuse rather than owe."""

from __future__ import annotations

from collections.abc import Callable

import trio


class TokenBucket:
    def __init__(
        self, rate: int, burst: int | None = None, clock: Callable[[], float] | None = None
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(rate // 4, 64 * 1024)
        self._tokens = float(self.burst)
        self._clock = clock or trio.current_time
        self._last: float | None = None

    def reserve(self, amount: int, now: float) -> float:
        """Take ``amount`` tokens, going into debt if needed; seconds to wait before using them.

        Debt makes the bucket fair and global: every caller reserves in turn, and
        each one waits until the bytes reserved before its own have been paid for.
        """
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= amount
        return max(0.0, -self._tokens / self.rate)

    async def take(self, amount: int) -> None:
        wait = self.reserve(amount, self._clock())
        if wait > 0:
            await trio.sleep(wait)


class Allowance:
    """``rate`` a second, bursts of ``burst``; past that, refused (no debt, no wait)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last: float | None = None

    def allow(self, now: float) -> bool:
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
