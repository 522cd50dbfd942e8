"""The registry's membership table: pure, no I/O, every operation takes ``now``.

A member's lease lasts ``ttl`` seconds from its last register or heartbeat.
Because the ttl is the same for everyone, members ordered by last renewal are
also ordered by expiry, so an insertion-ordered dict gives O(1) renew and
amortised O(1) expiry.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    name: str
    cert: str
    addresses: tuple[str, ...]
    last_seen: float

    def expires_at(self, ttl: float) -> float:
        return self.last_seen + ttl


class RegistryTable:
    def __init__(self, ttl: float) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.ttl = ttl
        self._entries: dict[str, Entry] = {}

    @property
    def heartbeat_interval(self) -> float:
        return self.ttl / 3

    def __len__(self) -> int:
        return len(self._entries)

    def register(
        self, id: str, name: str, cert: str, addresses: tuple[str, ...], now: float
    ) -> tuple[Entry, bool]:
        """Add or replace a member; returns the entry and whether it is new."""
        new = self.get(id, now) is None
        entry = Entry(id=id, name=name, cert=cert, addresses=addresses, last_seen=now)
        self._entries.pop(id, None)
        self._entries[id] = entry
        return entry, new

    def renew(self, id: str, now: float) -> Entry | None:
        """Extend a live member's lease; None if unknown or already expired."""
        entry = self.get(id, now)
        if entry is None:
            return None
        renewed = replace(entry, last_seen=now)
        del self._entries[id]
        self._entries[id] = renewed
        return renewed

    def leave(self, id: str) -> Entry | None:
        return self._entries.pop(id, None)

    def get(self, id: str, now: float) -> Entry | None:
        entry = self._entries.get(id)
        if entry is None or entry.expires_at(self.ttl) <= now:
            return None
        return entry

    def expire(self, now: float) -> list[Entry]:
        """Remove and return the members whose lease ran out."""
        gone: list[Entry] = []
        for entry in self._entries.values():
            if entry.expires_at(self.ttl) > now:
                break
            gone.append(entry)
        for entry in gone:
            del self._entries[entry.id]
        return gone

    def active(self, now: float) -> Iterator[Entry]:
        """Live members, oldest renewal first; expired ones are skipped even before expire()."""
        return (e for e in self._entries.values() if e.expires_at(self.ttl) > now)
