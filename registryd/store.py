"""Where the registry keeps its state.

The interface is what several registryd instances need to share one view:
every operation is atomic on its own (register, renew-if-alive, leave,
check-and-add a nonce), and expiry is derived from ``now`` so that two
instances never disagree about who is alive.

Every membership change bumps the shared membership version and is logged
with it, atomically with the change (see ``registryd.table``).  A new store
starts its version at the time in microseconds, so that the versions of a
restarted or of an unrelated store never fall in another's range: a peer's
cursor from elsewhere is then simply too old or too new, and it gets the
whole list.
"""

from __future__ import annotations

import time
from typing import Protocol

from registryd.guards import NonceCache
from registryd.table import CHANGE_LOG_SIZE, Changes, Entry, RegistryTable


class StoreError(Exception):
    """The store cannot answer now (e.g. Redis is down); the request may be retried."""


class Store(Protocol):
    ttl: float

    async def register(
        self, id: str, name: str, cert: str, addresses: tuple[str, ...], now: float
    ) -> bool:
        """Add or replace a member; True if it was not a live member before."""
        ...

    async def renew(self, id: str, now: float) -> int | None:
        """Extend a live member's lease: the membership version; None if unknown or expired."""
        ...

    async def leave(self, id: str) -> bool:
        """Remove a member at once; False if it was not there."""
        ...

    async def expire(self, now: float) -> list[str]:
        """Drop members whose lease ran out; the ids dropped by this call."""
        ...

    async def members(self, now: float) -> list[Entry]:
        """The live members."""
        ...

    async def version(self, now: float) -> int:
        """The membership version."""
        ...

    async def changes_since(self, since: int | None, now: float) -> Changes:
        """What changed after version ``since``, or all members (see ``RegistryTable``)."""
        ...

    async def count(self, now: float) -> int: ...

    async def remember_nonce(self, nonce: str, expires_at: float, now: float) -> bool:
        """Record a nonce until ``expires_at``; False if it was already seen."""
        ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """The embedded store: one process, state lost on restart (peers re-register)."""

    def __init__(self, ttl: float, *, log_size: int = CHANGE_LOG_SIZE) -> None:
        self.ttl = ttl
        self._table = RegistryTable(ttl, version=start_version(), log_size=log_size)
        self._nonces = NonceCache()

    async def register(
        self, id: str, name: str, cert: str, addresses: tuple[str, ...], now: float
    ) -> bool:
        _, new = self._table.register(id, name, cert, addresses, now)
        return new

    async def renew(self, id: str, now: float) -> int | None:
        return None if self._table.renew(id, now) is None else self._table.version

    async def leave(self, id: str) -> bool:
        return self._table.leave(id) is not None

    async def expire(self, now: float) -> list[str]:
        return [entry.id for entry in self._table.expire(now)]

    async def members(self, now: float) -> list[Entry]:
        return list(self._table.active(now))

    async def version(self, now: float) -> int:
        return self._table.version

    async def changes_since(self, since: int | None, now: float) -> Changes:
        return self._table.changes_since(since, now)

    async def count(self, now: float) -> int:
        return sum(1 for _ in self._table.active(now))

    async def remember_nonce(self, nonce: str, expires_at: float, now: float) -> bool:
        return self._nonces.check_and_add(nonce, expires_at, now)

    async def aclose(self) -> None:
        pass


def start_version() -> int:
    """Where a new store's membership version starts: now, in microseconds."""
    return int(time.time() * 1e6)
