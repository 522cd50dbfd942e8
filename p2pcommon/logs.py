"""The daemons' log format: one line per event on stderr."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable


def setup_logging(level: int = logging.INFO) -> None:
    """One line per event on stderr; journald adds its own timestamps."""
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class RepeatedLines:
    """Log lines that may repeat fast (a failing accept, a bad record read again and
    again) at most ``burst`` times a ``window`` per kind, then one summary line.

    The first lines of a kind are logged as they come; the rest of the window
    only counts them, and the next line after the window starts with
    "N more like this in the last minute".  Kinds are the caller's own fixed
    strings, never the network's, so the table stays small.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 1,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._burst = burst
        self._window = window
        self._clock = clock
        #: kind -> [window start, lines logged in it, lines held back in it]
        self._kinds: dict[str, list[float]] = {}

    def log(self, level: int, kind: str, message: str, *args: object) -> bool:
        """Log one line of ``kind`` unless its window is used up; True if it was logged."""
        now = self._clock()
        state = self._kinds.get(kind)
        if state is None or now - state[0] >= self._window:
            if state is not None and state[2]:
                self._summary(level, kind, int(state[2]))
            state = self._kinds[kind] = [now, 0, 0]
        if state[1] >= self._burst:
            state[2] += 1
            return False
        state[1] += 1
        self._logger.log(level, message, *args)
        return True

    def flush(self, level: int = logging.WARNING) -> None:
        """The summaries of every window that is over, without waiting for a next line."""
        now = self._clock()
        for kind, state in list(self._kinds.items()):
            if now - state[0] >= self._window:
                if state[2]:
                    self._summary(level, kind, int(state[2]))
                del self._kinds[kind]

    def _summary(self, level: int, kind: str, held: int) -> None:
        minutes = self._window / 60
        span = "minute" if minutes == 1 else f"{minutes:g} minutes"
        self._logger.log(level, "%s: %d more like this in the last %s", kind, held, span)
