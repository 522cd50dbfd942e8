"""A registry app on a clock the test moves, and signed requests for it (app-level tests)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from p2pcommon.http.events import Request
from p2pcommon.signing.signer import Signer
from registryd.app import RegistryApp
from registryd.metrics import RegistryMetrics
from registryd.pace import Pace
from registryd.store import MemoryStore
from tests.support import SECRET, Peer


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(clock: Clock) -> RegistryApp:
    """Without jitter: leases of exactly 30 s, heartbeats every 10 s."""
    pace = Pace(jitter=lambda: 0.0)
    return RegistryApp(Signer(SECRET), MemoryStore(), RegistryMetrics(), pace=pace, clock=clock)


def signed(
    method: str,
    path: str,
    payload: Any = None,
    *,
    now: float,
    host: str = "192.0.2.10",
    secret: str = SECRET,
    member: Peer | None = None,
) -> Request:
    """A request signed as p2pd signs it; with ``member``, its register proof too."""
    body = b"" if payload is None else json.dumps(payload).encode()
    headers, nonce = Signer(secret).sign_request(method, path, body, now=now)
    if member is not None:
        member.add_proof(headers, method, path, nonce)
    return Request(
        method=method,
        target=path,
        headers=[(k.lower().encode(), v.encode()) for k, v in headers.items()],
        body=body,
        client_host=host,
    )
