"""How often members heartbeat: the registry sets the pace (docs/protocol.md §3.3).

Pure: the member count and the number of registry processes come in, an
interval and a ttl go out.  While membership is small the interval is
``peer_ttl / 3``; as it grows, each process is given ``heartbeat_budget``
heartbeats a second and the interval lengthens to ``members / (budget ×
processes)``, up to ``max_heartbeat_interval``.  A random jitter of up to 10 %
only ever lengthens it, so that members registered together drift apart
instead of heartbeating in step; the ttl is three of these intervals.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

#: The largest jitter, as a fraction of the interval.
MAX_JITTER = 0.1
#: Defaults of the configuration keys (README: Configuration).
PEER_TTL = 30.0
HEARTBEAT_BUDGET = 200.0
MAX_HEARTBEAT_INTERVAL = 60.0


def _uniform_jitter() -> float:
    return random.uniform(0.0, MAX_JITTER)


@dataclass
class Pace:
    peer_ttl: float = PEER_TTL
    #: Heartbeats a second one registry process is given.
    heartbeat_budget: float = HEARTBEAT_BUDGET
    max_heartbeat_interval: float = MAX_HEARTBEAT_INTERVAL
    #: Registry processes sharing the store (1 with the memory store).
    processes: int = 1
    #: Members the store counted last (a lease answer, or the once-a-second census).
    members: int = 0
    #: Draws the jitter, a fraction in [0, MAX_JITTER]; tests fix it.
    jitter: Callable[[], float] = field(default=_uniform_jitter)

    @property
    def floor(self) -> float:
        """The interval while membership is small."""
        return self.peer_ttl / 3

    def interval(self, members: int) -> float:
        """The interval for ``members`` members, before jitter."""
        spread = members / (self.heartbeat_budget * max(1, self.processes))
        return max(self.floor, min(self.max_heartbeat_interval, spread))

    def lease(self) -> tuple[float, float]:
        """(ttl, heartbeat interval) for one lease answer: jittered, in milliseconds."""
        jitter = min(MAX_JITTER, max(0.0, self.jitter()))
        interval = round(self.interval(self.members) * (1 + jitter), 3)
        return round(3 * interval, 3), interval
