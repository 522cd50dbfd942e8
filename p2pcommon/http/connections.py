"""Live connections with bounds in all and per address, evicting the least useful. Pure.

A connection is *idle* (waiting for a request, or in its TLS handshake),
*partial* (a request has begun to arrive) or *busy* (a whole request is being
handled, or its answer sent).  Idle connections are cheap for an attacker to
hold and worthless to keep, and so is a request that stalls: one byte sent
and nothing more.  So when a bound is reached, the connection that has been
idle, or stalled in a partial request for more than ``STALLED_AFTER``
seconds, the longest makes room; failing that, the oldest partial request
(the reserve: a table full of requests that just began never locks
newcomers out); only busy connections are never evicted, and they are
bounded by their own deadlines.

"Per address" means per party: an IPv6 host has a whole /64 to itself, so
addresses are counted by ``address_key``.  Used by the HTTP servers and the
control socket.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import trio

#: Seconds after which a partial request counts as stalled, as evictable as an idle one.
STALLED_AFTER = 2.0


def address_key(host: str) -> str:
    """What one party controls of a client address: an IPv4 address, or an IPv6 /64."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host  # "unix", "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    return str(address)


@dataclass(eq=False)
class Connection:
    scope: trio.CancelScope
    host: str
    idle: bool = True
    #: When it last became idle (accepted, or done with a request).
    idle_since: float = 0.0
    #: When the request now arriving began; None while idle or busy.
    partial_since: float | None = None

    def request_started(self, now: float) -> None:
        self.idle, self.partial_since = False, now

    def request_received(self) -> None:
        self.partial_since = None

    def became_idle(self, now: float) -> None:
        self.idle, self.idle_since, self.partial_since = True, now, None


class ConnectionTable:
    """The live connections, at most ``max_connections`` in all and ``max_per_address``
    from one address (by ``address_key``)."""

    def __init__(self, max_connections: int, max_per_address: int) -> None:
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.all: set[Connection] = set()
        self._by_key: dict[str, set[Connection]] = {}
        self._keys: dict[Connection, str] = {}

    def admit(self, conn: Connection, now: float | None = None) -> bool:
        """Add ``conn``, evicting where a bound is reached; False (refuse the newcomer)
        only when everything in the way is busy.  ``now`` is the time of the
        connections' clock (trio's), needed only to tell stalled requests apart."""
        key = address_key(conn.host)
        same_key = self._by_key.get(key, set())
        for crowd, bound in ((same_key, self.max_per_address), (self.all, self.max_connections)):
            if len(crowd) >= bound and not self._evict(crowd, now):
                return False
        self.all.add(conn)
        self._by_key.setdefault(key, set()).add(conn)
        self._keys[conn] = key
        return True

    def _evict(self, crowd: set[Connection], now: float | None) -> bool:
        victim = _least_useful(crowd, now)
        if victim is None:
            return False
        victim.scope.cancel()
        self.discard(victim)
        return True

    def discard(self, conn: Connection) -> None:
        self.all.discard(conn)
        key = self._keys.pop(conn, None)
        same_key = self._by_key.get(key) if key is not None else None
        if same_key is not None:
            same_key.discard(conn)
            if not same_key:
                del self._by_key[key]  # type: ignore[arg-type]


def _least_useful(crowd: set[Connection], now: float | None) -> Connection | None:
    """The idle or stalled connection that has waited the longest, else the oldest
    partial request, else None (all busy)."""
    waiting: Connection | None = None
    waiting_since = float("inf")
    oldest_partial: Connection | None = None
    partial_since = float("inf")
    for conn in crowd:
        if conn.idle:
            since = conn.idle_since
        elif conn.partial_since is not None:
            since = conn.partial_since
            if since < partial_since:
                oldest_partial, partial_since = conn, since
            if now is None or now - since < STALLED_AFTER:
                continue
        else:
            continue  # busy
        if since < waiting_since:
            waiting, waiting_since = conn, since
    return waiting if waiting is not None else oldest_partial
