"""Accepting connections: trio's serve_listeners without its log flood; the peer's address.

When the process is out of file descriptors (or the system out of memory),
``accept`` fails until something closes; trio's loop logs each retry, with a
traceback, ten times a second.  Here the retries are the same and the log
says it once a minute (p2pcommon.logs.RepeatedLines).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from typing import Any

import trio

from p2pcommon.logs import RepeatedLines

#: What accept(2) says when the process or the system is out of something: the
#: listener is fine, the connection waits in the backlog until we retry.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: Seconds between accept attempts while one of those lasts.
ACCEPT_RETRY = 0.1


def peer_host(stream: trio.abc.Stream) -> str:
    """The client's address; OSError if it is gone already (a reset right after connect)."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        name = stream.socket.getpeername()
        return str(name[0]) if isinstance(name, tuple) else "unix"
    return "unknown"


async def accept_forever(
    listener: trio.abc.Listener[Any],
    start: Callable[[trio.abc.Stream], object],
    errors: RepeatedLines,
    bound: int,
) -> None:
    """Accept on ``listener`` and ``start`` a handler for each stream, until cancelled.

    As trio.serve_listeners does, but a failing accept is logged through
    ``errors`` (once a minute), not with a traceback ten times a second.
    """
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                errors.log(
                    logging.ERROR,
                    "accept failed",
                    "cannot accept connections: %s (%s); retrying every %g s. The "
                    "connection bound (%d) should have come first: is something else "
                    "holding file descriptors?",
                    errno.errorcode.get(exc.errno or 0, exc.errno),
                    os.strerror(exc.errno or 0),
                    ACCEPT_RETRY,
                    bound,
                )
                await trio.sleep(ACCEPT_RETRY)
                continue
            start(stream)
