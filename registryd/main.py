"""registryd: the command line (the registry itself is registryd.server)."""

from __future__ import annotations

import sys

from p2pcommon.prepare import DEADLINE, Child, PrepareError


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words and words[0] in ("config",):
        from registryd.admin import admin_command

        return admin_command(words)
    # The arguments and the configuration are read by a short child process
    # (registryd.prepare): what it imports never stays in the registry.  The
    # registry's own modules load meanwhile.
    try:
        child = Child("registryd.prepare", "start", words, DEADLINE)
        import trio

        from p2pcommon.logs import setup_logging
        from p2pcommon.options import ConfigError
        from p2pcommon.service import unwrap_group
        from registryd.prepare import prepared, reload_options
        from registryd.server import StartupError, serve

        ready = prepared(child)
    except PrepareError as exc:
        if exc.config:
            print(f"registryd: configuration error: {exc}", file=sys.stderr)
            return 2
        print(f"registryd: {exc}", file=sys.stderr)
        return 1
    if isinstance(ready, int):  # --help, --version, a usage error: the child said it
        return ready
    settings, secret = ready
    setup_logging()
    try:
        trio.run(serve, settings, secret, lambda: reload_options(words))
    except BaseException as exc:
        cause = unwrap_group(exc)
        if isinstance(cause, ConfigError):
            print(f"registryd: configuration error: {cause}", file=sys.stderr)
            return 2
        if isinstance(cause, StartupError):
            print(f"registryd: {cause}", file=sys.stderr)
            return 1
        if isinstance(cause, KeyboardInterrupt):
            return 130
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
