"""A Store whose every outcome feeds ``StoreHealth``: one log line per change.

While the store is known to be down, requests fail at once with
``StoreError`` instead of each waiting for Redis's timeouts: a dead Redis
must not pile requests up behind the few store threads.  ``expire`` is the
exception: the expire loop calls it every second or so whatever the state,
which makes it the probe that notices the store is back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from registryd.health import StoreHealth
from registryd.store import NewMembersLimited, Registered, Store, StoreError, WrongLease
from registryd.table import RESOLVE_LIMIT, Entry

log = logging.getLogger("registryd")

T = TypeVar("T")


class WatchedStore:
    def __init__(
        self,
        store: Store,
        health: StoreHealth,
        *,
        name: str,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.health = health
        self._store = store
        self._name = name
        self._on_change = on_change
        self._clock = clock

    async def _call(self, call: Callable[[], Awaitable[T]], *, probe: bool = False) -> T:
        health = self.health
        if not probe and not health.available:
            raise StoreError(health.reason)
        started = self._clock()
        try:
            result = await call()
        except StoreError as exc:
            if health.failed(str(exc), started, self._clock()):
                log.warning(
                    "store %s unavailable (%s): requests that need it get 503, and /healthz "
                    "503, until it answers again; check that Redis runs and is reachable",
                    self._name,
                    exc,
                )
                self._on_change()
            raise
        except (WrongLease, NewMembersLimited):
            self._answered(started)  # a refusal is an answer: the store works
            raise
        self._answered(started)
        return result

    def _answered(self, started: float) -> None:
        outage = self.health.succeeded(started, self._clock())
        if outage is not None:
            log.info("store %s reachable again after %.1f s; serving", self._name, outage)
            self._on_change()

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
        return await self._call(
            lambda: self._store.register(
                id, name, cert, addresses, now, ttl=ttl, lease_hash=lease_hash, allow_new=allow_new
            )
        )

    async def renew(self, id: str, now: float, *, ttl: float, lease_hash: str) -> int | None:
        return await self._call(lambda: self._store.renew(id, now, ttl=ttl, lease_hash=lease_hash))

    async def leave(self, id: str, now: float, *, lease_hash: str) -> bool:
        return await self._call(lambda: self._store.leave(id, now, lease_hash=lease_hash))

    async def expire(self, now: float) -> list[str]:
        return await self._call(lambda: self._store.expire(now), probe=True)

    async def get(self, id: str, now: float) -> Entry | None:
        return await self._call(lambda: self._store.get(id, now))

    async def resolve(
        self, name: str, prefix: str | None, now: float, *, limit: int = RESOLVE_LIMIT
    ) -> tuple[list[Entry], bool]:
        return await self._call(lambda: self._store.resolve(name, prefix, now, limit=limit))

    async def page(
        self, after: str, now: float, *, limit: int, certs: bool
    ) -> tuple[list[Entry], str | None]:
        return await self._call(lambda: self._store.page(after, now, limit=limit, certs=certs))

    async def members(self, now: float) -> list[Entry]:
        return await self._call(lambda: self._store.members(now))

    async def count(self, now: float) -> int:
        return await self._call(lambda: self._store.count(now))

    async def processes(self, now: float) -> int:
        return await self._call(lambda: self._store.processes(now))

    async def remember_nonce(self, nonce: str, expires_at: float, now: float) -> bool:
        return await self._call(lambda: self._store.remember_nonce(nonce, expires_at, now))

    async def aclose(self) -> None:
        await self._store.aclose()
