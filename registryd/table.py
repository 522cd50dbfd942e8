"""The registry's membership table: pure, no I/O, every operation takes ``now``.

A member's lease lasts ``ttl`` seconds from its last register or heartbeat.
Because the ttl is the same for everyone, members ordered by last renewal are
also ordered by expiry, so an insertion-ordered dict gives O(1) renew and
amortised O(1) expiry.

The membership version counts changes of who is a member and of what the
others need to reach them (name, addresses, certificate): a join, a changed
re-register, a leave, an expiry.  Heartbeats do not count, so that a peer
whose version is current has nothing to fetch.  The last ``log_size``
changes are kept as (version, id), which answers "what changed since V"
in O(changes) for any V not older than the log.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

#: Changes kept for deltas: a peer further behind gets the whole list.
CHANGE_LOG_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    name: str
    cert: str
    addresses: tuple[str, ...]
    last_seen: float
    #: SHA-256 (hex) of the lease token its last register was given; never listed.
    lease_hash: str = ""

    def expires_at(self, ttl: float) -> float:
        return self.last_seen + ttl

    def same_member(self, other: Entry) -> bool:
        """What the other members see is unchanged (``last_seen`` aside)."""
        return (self.name, self.cert, self.addresses) == (other.name, other.cert, other.addresses)


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed after a version, or everything when ``full``.

    ``members`` are the live records of members that joined or changed (all
    members when ``full``); ``left`` the ids that are no longer members.
    """

    version: int
    full: bool
    members: list[Entry] = field(default_factory=list)
    left: list[str] = field(default_factory=list)


class RegistryTable:
    def __init__(self, ttl: float, *, version: int = 0, log_size: int = CHANGE_LOG_SIZE) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.ttl = ttl
        self._entries: dict[str, Entry] = {}
        self.version = version
        self._log: deque[tuple[int, str]] = deque(maxlen=log_size)

    @property
    def heartbeat_interval(self) -> float:
        return self.ttl / 3

    def __len__(self) -> int:
        return len(self._entries)

    def register(
        self,
        id: str,
        name: str,
        cert: str,
        addresses: tuple[str, ...],
        now: float,
        *,
        lease_hash: str = "",
    ) -> tuple[Entry, bool]:
        """Add or replace a member; returns the entry and whether it is new."""
        old = self.get(id, now)
        entry = Entry(
            id=id, name=name, cert=cert, addresses=addresses, last_seen=now, lease_hash=lease_hash
        )
        self._entries.pop(id, None)
        self._entries[id] = entry
        if old is None or not old.same_member(entry):
            self._changed(id)
        return entry, old is None

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
        entry = self._entries.pop(id, None)
        if entry is not None:
            self._changed(id)
        return entry

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
            self._changed(entry.id)
        return gone

    def active(self, now: float) -> Iterator[Entry]:
        """Live members, oldest renewal first; expired ones are skipped even before expire()."""
        return (e for e in self._entries.values() if e.expires_at(self.ttl) > now)

    def _changed(self, id: str) -> None:
        self.version += 1
        self._log.append((self.version, id))

    def changes_since(self, since: int | None, now: float) -> Changes:
        """Who joined, changed or left after version ``since``; everything when
        ``since`` is None, outside what the log covers, or when the delta would
        be longer than the list itself."""
        touched = None if since is None else self._touched_since(since)
        if touched is None:
            return Changes(self.version, True, list(self.active(now)))
        members: list[Entry] = []
        left: list[str] = []
        for id in touched:
            entry = self.get(id, now)
            if entry is None:
                left.append(id)
            else:
                members.append(entry)
        return Changes(self.version, False, members, left)

    def _touched_since(self, since: int) -> dict[str, None] | None:
        """The ids changed after ``since``, once each; None if the log cannot tell."""
        log = self._log
        # Versions are consecutive, so the log answers any cursor from the
        # version just before its oldest entry up to the current one.
        oldest = log[0][0] - 1 if log else self.version
        if not oldest <= since <= self.version:
            return None
        touched: dict[str, None] = {}
        limit = len(self._entries)
        # Newest first, so the cost is that of the changes, not of the log.
        for version, id in reversed(log):
            if version <= since:
                break
            touched[id] = None
            if len(touched) > limit:
                return None
        return touched
