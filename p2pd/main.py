"""p2pd: the command line around the daemon."""

from __future__ import annotations

import sys

from p2pcommon.prepare import DEADLINE, Child, PrepareError


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words and words[0] in ("config", "install"):
        from p2pd.ops.admin import admin_command

        return admin_command(words)
    # The arguments, the configuration and the identity are handled by a short
    # child process (p2pd.prepare): what it imports never stays in the daemon.
    # The daemon's own modules load meanwhile.
    try:
        child = Child("p2pd.prepare", "start", words, DEADLINE)
        import trio

        from p2pcommon.logs import setup_logging
        from p2pcommon.service import unwrap_group
        from p2pd.control.server import ControlSocketInUse
        from p2pd.daemon import Daemon, StartupError
        from p2pd.prepare import prepared, reload_options

        ready = prepared(child)
    except PrepareError as exc:
        if exc.config:
            print(f"p2pd: configuration error: {exc}", file=sys.stderr)
            return 2
        print(f"p2pd: {exc}", file=sys.stderr)
        return 1
    if isinstance(ready, int):  # --help, --version, a usage error: the child said it
        return ready
    setup_logging()
    try:
        trio.run(Daemon(ready, reload=lambda: reload_options(words)).run)
    except BaseException as exc:
        cause = unwrap_group(exc)
        if isinstance(cause, KeyboardInterrupt):
            return 130
        if not isinstance(cause, StartupError | ControlSocketInUse):
            raise
        print(f"p2pd: {cause}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
