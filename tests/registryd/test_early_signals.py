"""Signals that arrive during start-up are caught, never the default action (death)."""

from __future__ import annotations

import logging
import os
import signal

import pytest
import trio

import registryd.server
from p2pcommon.service import Notifier
from registryd.config import RegistrySettings
from registryd.store import MemoryStore, Store
from tests.support import SECRET, free_port, wait_until


class RecordingNotifier(Notifier):
    """sd_notify without a socket (an unclosed one would fail the test): what was sent."""

    sent: list[dict[str, str]] = []

    def __init__(self) -> None:
        RecordingNotifier.sent = []

    def send(self, **fields: str) -> None:
        self.sent.append(fields)


@pytest.fixture(autouse=True)
def notifier(monkeypatch: pytest.MonkeyPatch) -> type[RecordingNotifier]:
    monkeypatch.setattr(registryd.server, "Notifier", RecordingNotifier)
    return RecordingNotifier


async def test_sighup_and_sigterm_during_start_up_are_handled_once_serving(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "registryd")
    settings = RegistrySettings(secret=SECRET, listen=f"127.0.0.1:{free_port()}")

    def slow_make_store(settings: RegistrySettings) -> Store:
        # Arrives while registryd is still making its store, before any listener.
        os.kill(os.getpid(), signal.SIGHUP)
        return MemoryStore()

    def messages() -> list[str]:
        return [record.getMessage() for record in caplog.records]

    monkeypatch.setattr(registryd.server, "make_store", slow_make_store)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                registryd.server.serve, settings, SECRET, lambda: (settings, SECRET)
            )

            async def reloaded() -> bool:
                return "reload: the config is valid and unchanged" in messages()

            await wait_until(reloaded, what="the SIGHUP's reload check")
            monkeypatch.setattr(registryd.server, "make_store", _never_called)
            os.kill(os.getpid(), signal.SIGTERM)
    assert "stopping on SIGTERM" in messages()
    assert messages()[-1] == "stopped"
    # systemd hears READY=1 first: the early SIGHUP's reload waited for it.
    readies = [i for i, m in enumerate(RecordingNotifier.sent) if m.get("READY") == "1"]
    assert RecordingNotifier.sent[readies[0]]["STATUS"].startswith("serving on")
    assert len(readies) == 2


async def test_sigterm_during_start_up_stops_gracefully_once_started(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "registryd")
    settings = RegistrySettings(secret=SECRET, listen=f"127.0.0.1:{free_port()}")

    def slow_make_store(settings: RegistrySettings) -> Store:
        os.kill(os.getpid(), signal.SIGTERM)
        return MemoryStore()

    monkeypatch.setattr(registryd.server, "make_store", slow_make_store)
    with trio.fail_after(30):
        await registryd.server.serve(settings, SECRET, lambda: (settings, SECRET))
    messages = [record.getMessage() for record in caplog.records]
    assert "stopping on SIGTERM" in messages
    assert messages[-1] == "stopped"


def _never_called(settings: RegistrySettings) -> Store:
    raise AssertionError("make_store is called once, at start")
