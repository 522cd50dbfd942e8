"""Where the registry keeps its state.

The interface is what several registryd instances need to share one view:
every operation is atomic on its own (register, renew-if-alive, leave,
check-and-add a nonce), and expiry is derived from ``now`` so that two
instances never disagree about who is alive.
"""

from __future__ import annotations

from typing import Protocol

from registryd.guards import NonceCache
from registryd.table import Entry, RegistryTable


class StoreError(Exception):
    """The store cannot answer now (e.g. Redis is down); the request may be retried."""


class Store(Protocol):
    ttl: float

    async def register(
        self, id: str, name: str, cert: str, addresses: tuple[str, ...], now: float
    ) -> bool:
        """Add or replace a member; True if it was not a live member before."""
        ...

    async def renew(self, id: str, now: float) -> bool:
        """Extend a live member's lease; False if it is unknown or expired."""
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

    async def count(self, now: float) -> int: ...

    async def remember_nonce(self, nonce: str, expires_at: float, now: float) -> bool:
        """Record a nonce until ``expires_at``; False if it was already seen."""
        ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """The embedded store: one process, state lost on restart (peers re-register)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._table = RegistryTable(ttl)
        self._nonces = NonceCache()

    async def register(
        self, id: str, name: str, cert: str, addresses: tuple[str, ...], now: float
    ) -> bool:
        _, new = self._table.register(id, name, cert, addresses, now)
        return new

    async def renew(self, id: str, now: float) -> bool:
        return self._table.renew(id, now) is not None

    async def leave(self, id: str) -> bool:
        return self._table.leave(id) is not None

    async def expire(self, now: float) -> list[str]:
        return [entry.id for entry in self._table.expire(now)]

    async def members(self, now: float) -> list[Entry]:
        return list(self._table.active(now))

    async def count(self, now: float) -> int:
        return sum(1 for _ in self._table.active(now))

    async def remember_nonce(self, nonce: str, expires_at: float, now: float) -> bool:
        return self._nonces.check_and_add(nonce, expires_at, now)

    async def aclose(self) -> None:
        pass
