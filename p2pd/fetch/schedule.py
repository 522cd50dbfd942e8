"""Which queued transfers start next.  Pure: no I/O, no clock, no trio.

A queued transfer is only data until it starts: no task, no lock, no
thread.  So a queue of thousands costs what its records cost (about 2 KiB
each, see docs/protocol.md §5), not a waiting task each (about 6 KiB).
Transfers start in the order they were queued, at most ``limit`` at once,
and never two of the same content at once (they share one partial file):
one whose content is busy waits aside, and goes first once that content's
transfer ends.  Every transfer is moved at most once aside and once back,
and a dropped one is skipped where it lies, the queues being compacted when
half of what they hold is dropped: adding, dropping and starting all cost
O(1) amortised, however long the queue.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Schedule(Generic[T]):
    def __init__(self, limit: int, content: Callable[[T], str]) -> None:
        self._limit = limit
        self._content = content
        #: Queued, in order, not started (dropped ones too, until skipped or compacted).
        self._queue: deque[T] = deque()
        #: Queued, waiting for their content's running transfer to end.
        self._aside: dict[str, deque[T]] = {}
        #: Contents whose running transfer ended while others waited aside: theirs go first.
        self._freed: deque[str] = deque()
        #: Every item queued and not dropped, by identity (which they keep: they are held).
        self._queued: dict[int, T] = {}
        #: Dropped items still lying in the queues.
        self._stale = 0
        #: Contents with a started transfer.
        self._busy: set[str] = set()

    @property
    def running(self) -> int:
        return len(self._busy)

    @property
    def waiting(self) -> int:
        """Items queued, neither started nor dropped."""
        return len(self._queued)

    def add(self, item: T) -> None:
        self._queue.append(item)
        self._queued[id(item)] = item

    def drop(self, item: T) -> bool:
        """Forget a queued item before it starts (cancelled); False if it is not queued
        (started already, or never added)."""
        if self._queued.pop(id(item), None) is None:
            return False
        self._stale += 1
        if self._stale > len(self._queued):
            self._compact()
        return True

    def ready(self) -> list[T]:
        """The items to start now, in order; they count as running until ``done``."""
        starting: list[T] = []
        while len(self._busy) < self._limit and self._freed:
            content = self._freed.popleft()
            aside = self._aside.pop(content, deque())
            if (item := self._first_queued(aside)) is not None:
                self._start(item, content, starting)
                if aside:
                    self._aside[content] = aside
        while len(self._busy) < self._limit and self._queue:
            item = self._queue.popleft()
            if id(item) not in self._queued:
                self._stale -= 1  # dropped
                continue
            content = self._content(item)
            if content in self._busy:
                self._aside.setdefault(content, deque()).append(item)
            else:
                self._start(item, content, starting)
        return starting

    def done(self, item: T) -> None:
        """A started item ended: the next one of its content goes first."""
        content = self._content(item)
        self._busy.discard(content)
        if content in self._aside:
            self._freed.append(content)

    def _first_queued(self, items: deque[T]) -> T | None:
        while items:
            item = items.popleft()
            if id(item) in self._queued:
                return item
            self._stale -= 1  # dropped
        return None

    def _start(self, item: T, content: str, starting: list[T]) -> None:
        del self._queued[id(item)]
        self._busy.add(content)
        starting.append(item)

    def _compact(self) -> None:
        def kept(items: deque[T]) -> deque[T]:
            return deque(item for item in items if id(item) in self._queued)

        self._queue = kept(self._queue)
        self._aside = {c: q for c, items in self._aside.items() if (q := kept(items))}
        self._freed = deque(c for c in self._freed if c in self._aside)
        self._stale = 0
