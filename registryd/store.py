"""Where the registry keeps its state.

The interface is what several registryd instances need to share one view:
every operation is atomic on its own (register, renew-if-alive, leave,
check-and-add a nonce, one page, one resolution), and liveness is derived
from ``now`` and each member's own ``expires_at``, so that two instances
never disagree about who is alive.  Nothing here looks at every member
except ``members`` (``GET /clients``, answered from a snapshot).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, replace
from typing import Protocol

from registryd.guards import NonceCache
from registryd.records import checked, skip_bad
from registryd.table import RESOLVE_LIMIT, Entry, RegistryTable


class StoreError(Exception):
    """The store cannot answer now (e.g. Redis is down); the request may be retried."""


class WrongLease(Exception):
    """The member is live, with another lease than the one shown: nothing was changed."""


class NewMembersLimited(Exception):
    """A register of an id that is not a live member, while new ids were not allowed."""


@dataclass(frozen=True)
class Registered:
    #: It was not a live member before.
    new: bool
    #: How many members the store counts now (approximately: it feeds the pace).
    members: int


class Store(Protocol):
    async def register(
        self,
        id: str,
        name: str,
        cert: str,
        addresses: tuple[str, ...],
        now: float,
        *,
        ttl: float,
        lease_hash: str,
        allow_new: bool = True,
    ) -> Registered:
        """Add or replace a member with a new lease of ``ttl`` seconds.

        NewMembersLimited, changing nothing, if it was not live and ``allow_new`` is False.
        """
        ...

    async def renew(self, id: str, now: float, *, ttl: float, lease_hash: str) -> int | None:
        """Extend a live member's lease to ``now + ttl``: the member count; None if unknown
        or expired; WrongLease if ``lease_hash`` is not its lease's."""
        ...

    async def leave(self, id: str, now: float, *, lease_hash: str) -> bool:
        """Remove a live member at once; False if it was not one; WrongLease as ``renew``."""
        ...

    async def expire(self, now: float) -> list[str]:
        """Drop members whose lease ran out (a bounded number per call); the ids dropped."""
        ...

    async def get(self, id: str, now: float) -> Entry | None:
        """The live member ``id``, or None."""
        ...

    async def resolve(
        self, name: str, prefix: str | None, now: float, *, limit: int = RESOLVE_LIMIT
    ) -> tuple[list[Entry], bool]:
        """Live members named ``name`` or whose id starts with ``prefix``: the first
        ``limit`` by id, and whether there are more."""
        ...

    async def page(
        self, after: str, now: float, *, limit: int, certs: bool
    ) -> tuple[list[Entry], str | None]:
        """At most ``limit`` live members with ids after ``after``, sorted; the id to
        continue after, or None at the end.  ``certs`` False: records without ``cert``."""
        ...

    async def members(self, now: float) -> list[Entry]:
        """Every live member."""
        ...

    async def count(self, now: float) -> int:
        """Live members (approximately)."""
        ...

    async def processes(self, now: float) -> int:
        """Say that this registry process is alive; how many are, on this store."""
        ...

    async def remember_nonce(self, nonce: str, expires_at: float, now: float) -> bool:
        """Record a nonce until ``expires_at``; False if it was already seen."""
        ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """The embedded store: one process, state lost on restart (peers re-register)."""

    def __init__(self) -> None:
        self._table = RegistryTable()
        self._nonces = NonceCache()

    async def register(
        self,
        id: str,
        name: str,
        cert: str,
        addresses: tuple[str, ...],
        now: float,
        *,
        ttl: float,
        lease_hash: str,
        allow_new: bool = True,
    ) -> Registered:
        if not allow_new and self._table.get(id, now) is None:
            raise NewMembersLimited(id)
        table = self._table
        _, new = table.register(id, name, cert, addresses, now, ttl=ttl, lease_hash=lease_hash)
        return Registered(new, len(table))

    async def renew(self, id: str, now: float, *, ttl: float, lease_hash: str) -> int | None:
        if not self._holds_lease(id, now, lease_hash):
            return None
        self._table.renew(id, now, ttl=ttl)
        return len(self._table)

    async def leave(self, id: str, now: float, *, lease_hash: str) -> bool:
        if not self._holds_lease(id, now, lease_hash):
            return False
        return self._table.leave(id) is not None

    def _holds_lease(self, id: str, now: float, lease_hash: str) -> bool:
        """False if ``id`` is no live member; WrongLease if its lease is another."""
        entry = self._table.get(id, now)
        if entry is None:
            return False
        if not hmac.compare_digest(entry.lease_hash, lease_hash):
            raise WrongLease(id)
        return True

    async def expire(self, now: float) -> list[str]:
        return [entry.id for entry in self._table.expire(now)]

    async def get(self, id: str, now: float) -> Entry | None:
        return checked(self._table.get(id, now), "memory")

    async def resolve(
        self, name: str, prefix: str | None, now: float, *, limit: int = RESOLVE_LIMIT
    ) -> tuple[list[Entry], bool]:
        found, more = self._table.resolve(name, prefix, now, limit=limit)
        return list(skip_bad(found, "memory")), more

    async def page(
        self, after: str, now: float, *, limit: int, certs: bool
    ) -> tuple[list[Entry], str | None]:
        found, following = self._table.page(after, now, limit=limit)
        good = skip_bad(found, "memory")
        return [e if certs else replace(e, cert="") for e in good], following

    async def members(self, now: float) -> list[Entry]:
        return list(skip_bad(self._table.active(now), "memory"))

    async def count(self, now: float) -> int:
        return len(self._table)

    async def processes(self, now: float) -> int:
        return 1

    async def remember_nonce(self, nonce: str, expires_at: float, now: float) -> bool:
        return self._nonces.check_and_add(nonce, expires_at, now)

    async def aclose(self) -> None:
        pass
