"""What every daemon here needs from its surroundings: systemd and signals."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import sdnotify
import trio

from p2pcommon.boundary import failure_boundary

log = logging.getLogger(__name__)


#: Characters of one sd_notify value (systemd shows STATUS= in one line).
MAX_VALUE = 1000


def one_line(text: str, limit: int = MAX_VALUE) -> str:
    """``text`` as one printable line of at most ``limit`` characters."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else " " for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Notifier:
    """sd_notify messages; silent when not started by systemd (no NOTIFY_SOCKET).

    The send never stalls the trio loop: a notification socket nobody reads
    (its queue holds ~10 datagrams) would otherwise block every task.  A
    STATUS= update is dropped when the queue is full; the messages systemd
    acts on (READY, STOPPING, RELOADING, WATCHDOG) wait at most
    ``ESSENTIAL_WAIT`` seconds.
    """

    ESSENTIAL_WAIT = 2.0

    def __init__(self) -> None:
        self._notifier = sdnotify.SystemdNotifier()
        self.dropped = 0

    def send(self, **fields: str) -> None:
        sock = self._notifier.socket
        if sock is None:
            return
        essential = fields.keys() - {"STATUS"}
        # A value is one line of printable text: a newline from remote text (a
        # registry's error message) would otherwise add an assignment systemd
        # acts on, such as WATCHDOG=trigger.
        message = "\n".join(f"{key}={one_line(value)}" for key, value in fields.items())
        try:
            sock.settimeout(self.ESSENTIAL_WAIT if essential else 0.0)
            sock.sendall(message.encode("utf-8", "backslashreplace"))
        except OSError:  # full queue, timed out, or systemd gone: never the daemon's end
            self.dropped += 1

    def close(self) -> None:
        if self._notifier.socket is not None:
            self._notifier.socket.close()
            self._notifier.socket = None

    def ready(self, status: str) -> None:
        self.send(READY="1", STATUS=status)

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def stopping(self, status: str = "stopping") -> None:
        self.send(STOPPING="1", STATUS=status)

    def watchdog_interval(self) -> float | None:
        """Half of systemd's WatchdogSec for this process, or None if not asked for."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2_000_000
        except ValueError:
            return None

    async def keep_watchdog_fed(self) -> None:
        """Ping from the trio loop itself, so that a stalled loop gets restarted."""
        interval = self.watchdog_interval()
        if interval is None:
            return
        while True:
            self.send(WATCHDOG="1")
            await trio.sleep(interval)


async def reload_on_hangup(
    reload: Callable[[], Awaitable[None]],
    notifier: Notifier,
    status: Callable[[], str],
    hangups: AsyncIterator[int] | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``reload`` on each SIGHUP (``systemctl reload``), with systemd's RELOADING=1.

    Until a receiver is installed a SIGHUP kills: pass ``hangups``, a receiver
    opened first thing, or start this before any slow start-up work.
    """
    if hangups is None:
        with trio.open_signal_receiver(signal.SIGHUP) as receiver:
            task_status.started()
            await _reload_each(receiver, reload, notifier, status)
    else:
        task_status.started()
        await _reload_each(hangups, reload, notifier, status)


async def _reload_each(
    hangups: AsyncIterator[int],
    reload: Callable[[], Awaitable[None]],
    notifier: Notifier,
    status: Callable[[], str],
) -> None:
    async for _ in hangups:
        notifier.send(RELOADING="1", STATUS="reloading the configuration")
        # A failed reload keeps the running configuration and the daemon.
        with failure_boundary("reload", "reloading the configuration", log):
            await reload()
        notifier.ready(status())


class Termination:
    """SIGTERM and SIGINT, caught from the moment the receiver is opened.

    Open it first thing (``with termination_signals() as termination:``):
    until trio's receiver is installed, a SIGTERM takes the default action
    and kills the process without a goodbye, which a busy machine makes
    likely during a slow start.
    """

    def __init__(self, signals: Any) -> None:
        self._signals = signals

    async def wait(self) -> str:
        """Block until SIGTERM or SIGINT (including one that came already); its name."""
        async for signum in self._signals:
            return signal.Signals(signum).name
        raise AssertionError("signal receiver ended")


@contextlib.contextmanager
def termination_signals() -> Iterator[Termination]:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        yield Termination(signals)
