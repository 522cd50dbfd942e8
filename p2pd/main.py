"""p2pd: the command line around the daemon."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable

from p2pcommon.prepare import Child, daemon_main


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words and words[0] in ("config", "install"):
        from p2pd.ops.admin import admin_command

        return admin_command(words)
    # The arguments, the configuration and the identity are handled by a short
    # child process (p2pd.prepare): what it imports never stays in the daemon.
    return daemon_main("p2pd", words, lambda child: _daemon(child, words))


def _daemon(child: Child, words: list[str]) -> Callable[[], Awaitable[None]] | int:
    from p2pd.daemon import Daemon
    from p2pd.prepare import prepared, reload_options

    ready = prepared(child)
    if isinstance(ready, int):
        return ready
    return Daemon(ready, reload=lambda: reload_options(words)).run


if __name__ == "__main__":
    sys.exit(main())
