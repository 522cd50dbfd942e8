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

import hmac
import time
from dataclasses import replace
from typing import Protocol

from registryd.guards import NonceCache
from registryd.records import skip_bad
from registryd.table import CHANGE_LOG_SIZE, Changes, Entry, RegistryTable


class StoreError(Exception):
    """The store cannot answer now (e.g. Redis is down); the request may be retried."""


class WrongLease(Exception):
    """The member is live, with another lease than the one shown: nothing was changed."""


class NewMembersLimited(Exception):
    """A register of an id that is not a live member, while new ids were not allowed."""


class Store(Protocol):
    ttl: float

    async def register(
        self,
        id: str,
        name: str,
        cert: str,
        addresses: tuple[str, ...],
        now: float,
        *,
        lease_hash: str,
        allow_new: bool = True,
    ) -> bool:
        """Add or replace a member with a new lease; True if it was not a live member before.

        NewMembersLimited, changing nothing, if it was not and ``allow_new`` is False.
        """
        ...

    async def renew(self, id: str, now: float, *, lease_hash: str) -> int | None:
        """Extend a live member's lease: the membership version; None if unknown or expired;
        WrongLease if ``lease_hash`` is not its lease's."""
        ...

    async def leave(self, id: str, now: float, *, lease_hash: str) -> bool:
        """Remove a live member at once; False if it was not one; WrongLease as ``renew``."""
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
        self,
        id: str,
        name: str,
        cert: str,
        addresses: tuple[str, ...],
        now: float,
        *,
        lease_hash: str,
        allow_new: bool = True,
    ) -> bool:
        if not allow_new and self._table.get(id, now) is None:
            raise NewMembersLimited(id)
        _, new = self._table.register(id, name, cert, addresses, now, lease_hash=lease_hash)
        return new

    async def renew(self, id: str, now: float, *, lease_hash: str) -> int | None:
        if not self._holds_lease(id, now, lease_hash):
            return None
        self._table.renew(id, now)
        return self._table.version

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

    async def members(self, now: float) -> list[Entry]:
        return list(skip_bad(self._table.active(now), "memory"))

    async def version(self, now: float) -> int:
        return self._table.version

    async def changes_since(self, since: int | None, now: float) -> Changes:
        changes = self._table.changes_since(since, now)
        return replace(changes, members=list(skip_bad(changes.members, "memory")))

    async def count(self, now: float) -> int:
        return sum(1 for _ in self._table.active(now))

    async def remember_nonce(self, nonce: str, expires_at: float, now: float) -> bool:
        return self._nonces.check_and_add(nonce, expires_at, now)

    async def aclose(self) -> None:
        pass


def start_version() -> int:
    """Where a new store's membership version starts: now, in microseconds."""
    return int(time.time() * 1e6)
