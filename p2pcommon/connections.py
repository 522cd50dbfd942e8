"""Live connections with bounds in all and per address, evicting the idlest. Pure.

Idle connections are cheap for an attacker to hold and worthless to keep, so
when a bound is reached the longest-idle one makes room; busy ones are bounded
by their own timeouts.  Used by the HTTP servers and the control socket.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio


@dataclass(eq=False)
class Connection:
    scope: trio.CancelScope
    host: str
    idle: bool = True
    #: When it last became idle (accepted, or done with a request).
    idle_since: float = 0.0


class ConnectionTable:
    """The live connections, by address, at most ``max_connections`` in all and
    ``max_per_address`` from one address."""

    def __init__(self, max_connections: int, max_per_address: int) -> None:
        self._max_connections = max_connections
        self._max_per_address = max_per_address
        self.all: set[Connection] = set()
        self._by_host: dict[str, set[Connection]] = {}

    def admit(self, conn: Connection) -> bool:
        """Add ``conn``, evicting the longest-idle connection where a bound is reached.

        False (refuse the newcomer) only when everything in the way is busy.
        """
        same_host = self._by_host.get(conn.host, set())
        for crowd, bound in (
            (same_host, self._max_per_address),
            (self.all, self._max_connections),
        ):
            if len(crowd) >= bound and not self._evict_idlest(crowd):
                return False
        self.all.add(conn)
        self._by_host.setdefault(conn.host, set()).add(conn)
        return True

    def _evict_idlest(self, crowd: set[Connection]) -> bool:
        idle = [c for c in crowd if c.idle]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.idle_since)
        victim.scope.cancel()
        self.discard(victim)
        return True

    def discard(self, conn: Connection) -> None:
        self.all.discard(conn)
        same_host = self._by_host.get(conn.host)
        if same_host is not None:
            same_host.discard(conn)
            if not same_host:
                del self._by_host[conn.host]
