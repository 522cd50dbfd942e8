"""Exponential backoff with full jitter (pure: the caller sleeps)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays drawn uniformly from [0, min(cap, base * 2**attempt)].

    Full jitter spreads the retries of many peers that lost the same registry
    at the same moment, instead of having them return in lockstep.
    """

    base: float = 0.5
    cap: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def ceiling(self) -> float:
        return min(self.cap, self.base * 2.0**self.attempt)

    def next_delay(self) -> float:
        delay = self.rng.uniform(0, self.ceiling())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
