"""registryd: the command line (the registry itself is registryd.server)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Awaitable, Callable

from p2pcommon.prepare import Child, daemon_main


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words and words[0] in ("config",):
        from registryd.admin import admin_command

        return admin_command(words)
    # The arguments and the configuration are read by a short child process
    # (registryd.prepare): what it imports never stays in the registry.
    return daemon_main("registryd", words, lambda child: _registry(child, words))


def _registry(child: Child, words: list[str]) -> Callable[[], Awaitable[None]] | int:
    from registryd.prepare import prepared, reload_options
    from registryd.server import serve

    ready = prepared(child)
    if isinstance(ready, int):
        return ready
    settings, secret = ready
    return functools.partial(serve, settings, secret, lambda: reload_options(words))


if __name__ == "__main__":
    sys.exit(main())
