"""The registry's membership table: pure, no I/O, every operation takes ``now``.

Each member's lease ends at its own ``expires_at`` (its last register or
heartbeat plus the ttl that answer advised, docs/protocol.md §3.3).  What the
routes need, each without looking at every member:

- by id: a dict;
- pages and id prefixes: the ids in a sorted list (sortedcontainers), so a
  page or a prefix is a range;
- names: ``<name>\\0<id>`` in a sorted list, so the members of one name come
  sorted by id, as a range (names are printable: never a NUL);
- expiry: buckets by second of ``expires_at``, and a heap of the buckets'
  seconds: a sweep takes the buckets that ran out, O(expired), and looks
  into the one current second only.

A member whose lease ran out is never answered (``get``, pages, resolution
and lists check ``expires_at``) even before the sweep removes it.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

from sortedcontainers import SortedList

#: Members answered by one resolution at most (docs/protocol.md §3.4).
RESOLVE_LIMIT = 10
#: The character after every character of an id (a-z, 2-7): the end of a prefix's range.
_AFTER_ID_CHARS = "{"


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    name: str
    cert: str
    addresses: tuple[str, ...]
    last_seen: float
    #: When the lease runs out: the last register or heartbeat plus its ttl.
    expires_at: float = math.inf
    #: SHA-256 (hex) of the lease token its last register was given; never listed.
    lease_hash: str = ""

    def live(self, now: float) -> bool:
        return self.expires_at > now


def name_key(name: str, member_id: str) -> str:
    """The key of the name index: sorted by name, then by id."""
    return f"{name}\0{member_id}"


class RegistryTable:
    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._ids = SortedList()
        self._names = SortedList()
        #: Second (ceil of expires_at) -> ids whose lease ends within it.
        self._buckets: dict[int, set[str]] = {}
        #: The buckets' seconds, soonest first (a second may appear twice: harmless).
        self._seconds: list[int] = []

    def __len__(self) -> int:
        """Members, counting those whose lease ran out within the last sweep's second."""
        return len(self._entries)

    def register(
        self,
        id: str,
        name: str,
        cert: str,
        addresses: tuple[str, ...],
        now: float,
        *,
        ttl: float,
        lease_hash: str = "",
    ) -> tuple[Entry, bool]:
        """Add or replace a member with a lease of ``ttl``; the entry and whether it is new
        (it was no live member)."""
        old = self._entries.get(id)
        entry = Entry(id, name, cert, addresses, now, now + ttl, lease_hash)
        if old is None:
            self._ids.add(id)
            self._names.add(name_key(name, id))
        else:
            self._unbucket(old)
            if old.name != name:
                self._names.remove(name_key(old.name, id))
                self._names.add(name_key(name, id))
        self._entries[id] = entry
        self._bucket(entry)
        return entry, old is None or not old.live(now)

    def renew(self, id: str, now: float, *, ttl: float) -> Entry | None:
        """Extend a live member's lease to ``now + ttl``; None if unknown or run out."""
        entry = self.get(id, now)
        if entry is None:
            return None
        self._unbucket(entry)
        renewed = replace(entry, last_seen=now, expires_at=now + ttl)
        self._entries[id] = renewed
        self._bucket(renewed)
        return renewed

    def leave(self, id: str) -> Entry | None:
        entry = self._entries.get(id)
        if entry is not None:
            self._unbucket(entry)
            self._remove(entry)
        return entry

    def get(self, id: str, now: float) -> Entry | None:
        entry = self._entries.get(id)
        if entry is None or not entry.live(now):
            return None
        return entry

    def expire(self, now: float) -> list[Entry]:
        """Remove and return the members whose lease ran out by ``now``."""
        gone: list[Entry] = []
        seconds = self._seconds
        while seconds and seconds[0] <= now:
            for member_id in self._buckets.pop(heapq.heappop(seconds), ()):
                gone.append(self._remove(self._entries[member_id]))
        # The current second's bucket holds leases that end before and after ``now``.
        current = self._buckets.get(math.ceil(now))
        if current:
            ended = [i for i in current if not self._entries[i].live(now)]
            for member_id in ended:
                current.discard(member_id)
                gone.append(self._remove(self._entries[member_id]))
        return gone

    def active(self, now: float) -> Iterator[Entry]:
        """Live members, in no particular order."""
        return (e for e in self._entries.values() if e.live(now))

    def page(self, after: str, now: float, *, limit: int) -> tuple[list[Entry], str | None]:
        """Up to ``limit`` live members with ids sorted after ``after`` ("": from the
        start); and the id to continue after, None when no member follows."""
        found: list[Entry] = []
        ids = self._ids.irange(minimum=after, inclusive=(False, True)) if after else self._ids
        for member_id in ids:
            entry = self._entries[member_id]
            if not entry.live(now):
                continue  # swept within the second
            if len(found) == limit:
                return found, found[-1].id
            found.append(entry)
        return found, None

    def resolve(
        self, name: str, prefix: str | None, now: float, *, limit: int = RESOLVE_LIMIT
    ) -> tuple[list[Entry], bool]:
        """Members named ``name`` or whose id starts with ``prefix``: the first ``limit``
        by id, and whether there are more."""
        # The first limit + 1 of each, by id, hold the first limit + 1 of their union.
        named = self._first_live(self._named(name), now, limit + 1)
        prefixed = self._first_live(self._prefixed(prefix), now, limit + 1) if prefix else []
        ids = sorted(set(named) | set(prefixed))
        return [self._entries[i] for i in ids[:limit]], len(ids) > limit

    def _named(self, name: str) -> Iterator[str]:
        start = len(name) + 1
        low, high = f"{name}\0", f"{name}\1"
        for key in self._names.irange(minimum=low, maximum=high, inclusive=(True, False)):
            yield key[start:]

    def _prefixed(self, prefix: str) -> Iterator[str]:
        high = prefix + _AFTER_ID_CHARS
        return iter(self._ids.irange(minimum=prefix, maximum=high, inclusive=(True, False)))

    def _first_live(self, ids: Iterator[str], now: float, count: int) -> list[str]:
        found: list[str] = []
        for member_id in ids:
            if self._entries[member_id].live(now):
                found.append(member_id)
                if len(found) == count:
                    break
        return found

    def _remove(self, entry: Entry) -> Entry:
        """Out of the dict and both indexes (its bucket is the caller's)."""
        del self._entries[entry.id]
        self._ids.remove(entry.id)
        self._names.remove(name_key(entry.name, entry.id))
        return entry

    def _bucket(self, entry: Entry) -> None:
        second = math.ceil(entry.expires_at)
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = set()
            heapq.heappush(self._seconds, second)
        bucket.add(entry.id)

    def _unbucket(self, entry: Entry) -> None:
        bucket = self._buckets.get(math.ceil(entry.expires_at))
        if bucket is not None:
            bucket.discard(entry.id)
