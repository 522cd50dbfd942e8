"""One failure boundary around every unit of work (docs/protocol.md §8).

A connection, a request, a transfer, a control client, a watch event or one
round of a timer loop runs inside ``failure_boundary``: what escapes it is
logged once (one line; the traceback only at debug level), counted, and the
daemon goes on serving.  Cancellation (a ``BaseException``) passes through,
so shutdown and timeouts keep working.  Only start-up errors end a process.

This is what trio's ``serve_listeners`` leaves to its handler and what
hypercorn's ``TCPServer.run`` does for one connection.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator

import trio

from p2pcommon.lifecycle import unwrap_group

log = logging.getLogger("p2pcommon.boundary")

#: Failures caught per kind of unit ("connection", "transfer", …), for status and metrics.
failures: Counter[str] = Counter()


def describe(exc: BaseException) -> str:
    """One line: the error's type and text, the innermost of a group."""
    exc = unwrap_group(exc)
    text = str(exc).replace("\n", " ")[:500]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def contained(kind: str, exc: Exception, what: str = "", logger: logging.Logger = log) -> None:
    """A unit of work of ``kind`` failed and the daemon goes on: count it, log one
    line, and the traceback at debug level only."""
    failures[kind] += 1
    logger.error("%s failed: %s", what or kind, describe(exc))
    logger.debug("%s failed", what or kind, exc_info=exc)


@contextlib.contextmanager
def failure_boundary(kind: str, what: str = "", logger: logging.Logger = log) -> Iterator[None]:
    """Contain any ``Exception`` of one unit of work: log a line, count it, go on."""
    try:
        yield
    except Exception as exc:
        contained(kind, exc, what, logger)


async def keep_running(
    kind: str,
    round_: Callable[[], Awaitable[None]],
    *,
    pause: float = 1.0,
    max_pause: float = 30.0,
    logger: logging.Logger = log,
) -> None:
    """Run a loop body forever; a failed round is logged and retried after a pause.

    The pause doubles while rounds keep failing (so a broken store is not
    hammered, nor the log flooded) and starts again at ``pause`` after a
    round that succeeds.
    """
    delay = pause
    while True:
        failed = True
        with failure_boundary(kind, logger=logger):
            await round_()
            failed = False
        if not failed:
            delay = pause
            continue
        await trio.sleep(delay)
        delay = min(delay * 2, max_pause)
