"""A real registry (RegistryApp, memory store) on loopback, for p2pd's parts that look
members up: members are put in its store directly (their registers are registryd's
tests' business), and p2pd's Directory asks it over HTTP with a real RegistryClient."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from p2pcommon.http.events import Request, Response
from p2pcommon.http.server import HttpServer
from p2pcommon.models import Member
from p2pcommon.registry_client import RegistryClient
from p2pcommon.signing.signer import Signer
from p2pd.membership.directory import Directory
from registryd.app import RegistryApp
from registryd.metrics import RegistryMetrics
from registryd.pace import Pace
from registryd.store import MemoryStore
from tests.support import SECRET

#: What the members put in here hold as their lease (a test's members never heartbeat).
LEASE = "lease-of-a-test-member"
TTL = 3600.0


@dataclass
class LiveRegistry:
    store: MemoryStore
    app: RegistryApp
    url: str
    client: RegistryClient

    async def add(self, *members: Member) -> None:
        for m in members:
            await self.store.register(
                m.id, m.name, m.cert, tuple(m.addresses), time.time(), ttl=TTL, lease_hash=LEASE
            )

    async def remove(self, *member_ids: str) -> None:
        for member_id in member_ids:
            await self.store.leave(member_id, time.time(), lease_hash=LEASE)

    def directory(self, own_id: str, *, interval: float = 30.0) -> Directory:
        return Directory(own_id, self.client, interval=interval)


Handler = Callable[[Request], Awaitable[Response]]


@asynccontextmanager
async def live_registry(
    members: Iterable[Member] = (), *, front: Callable[[Handler], Handler] | None = None
) -> AsyncIterator[LiveRegistry]:
    """``front``: wraps the app's handler (to count or hold requests)."""
    store = MemoryStore()
    app = RegistryApp(Signer(SECRET), store, RegistryMetrics(), pace=Pace())
    server = HttpServer(app.handle if front is None else front(app.handle))
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(server.run, listeners)
        url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        async with RegistryClient([url], SECRET, timeout=5.0) as client:
            registry = LiveRegistry(store, app, url, client)
            await registry.add(*members)
            yield registry
        await server.shutdown(1)
        nursery.cancel_scope.cancel()
