"""How a daemon here ends its start or its run: the errors, the exit statuses, the deadline.

Both daemons (p2pd, registryd) end the same way: a configuration at fault
exits 2 with ``<prog>: configuration error: …``, any other reason the start
cannot go on exits 1 with ``<prog>: …``, Ctrl-C 130; anything else is a bug
and keeps its traceback.  Light on purpose (the standard library only): the
commands import it before their start-up child runs.
"""

from __future__ import annotations

import sys

#: Seconds that work in flight (requests, uploads) gets to finish after SIGTERM.
SHUTDOWN_DEADLINE = 5.0

EXIT_FAILED = 1
EXIT_CONFIG = 2
#: As a shell reports a process ended by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130


class ConfigError(Exception):
    """The configuration cannot be used; the message says what and how to fix it."""


class StartupError(Exception):
    """The daemon cannot start for a reason outside its configuration; the message
    says what and what to do."""


def unwrap_group(exc: BaseException) -> BaseException:
    """The single error inside nested exception groups (trio nurseries wrap what escapes)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def exit_status(prog: str, exc: BaseException) -> int:
    """The exit status for what ended a daemon's start or run, its message said on
    stderr; ``exc`` raised again when it is none of these (a bug: its traceback says
    where)."""
    cause = unwrap_group(exc)
    if isinstance(cause, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(cause, ConfigError):
        print(f"{prog}: configuration error: {cause}", file=sys.stderr)
        return EXIT_CONFIG
    if isinstance(cause, StartupError):
        print(f"{prog}: {cause}", file=sys.stderr)
        return EXIT_FAILED
    raise exc
