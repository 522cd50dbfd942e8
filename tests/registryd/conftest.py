"""A registry app on a clock the test moves, for the app-level tests."""

from __future__ import annotations

import pytest

from p2pcommon.signing import Signer
from registryd.app import RegistryApp
from registryd.metrics import RegistryMetrics
from registryd.store import MemoryStore
from tests.support import SECRET


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
    return RegistryApp(Signer(SECRET), MemoryStore(30.0), RegistryMetrics(), clock=clock)
