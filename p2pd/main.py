"""p2pd: the command line around the daemon."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from p2pcommon.service import daemon_arguments, unwrap_group
from p2pcommon.settings import ConfigError, exposed_secret_file, load_settings
from p2pd.config import DEFAULT_PATH, PeerSettings, check_folders

#: What `p2pd --help` lists beside running the daemon (p2pd.admin runs them).
ADMIN_COMMANDS = (
    ("config init --share DIR --downloads DIR --registry URL", "write a first config file"),
    ("install [--config FILE]", "let the systemd service reach the configured folders"),
)


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words and words[0] in ("config", "install"):
        from p2pd.admin import admin_command

        return admin_command(words)
    args = daemon_arguments(
        "p2pd",
        "The p2pd peer daemon: shares a folder with the members.",
        DEFAULT_PATH,
        argv,
        ADMIN_COMMANDS,
    )
    config_path: Path | None = None

    def load() -> tuple[PeerSettings, str]:
        nonlocal config_path
        settings, config_path = load_settings(
            PeerSettings, explicit_path=args.config, default_path=DEFAULT_PATH
        )
        secret = settings.resolve_secret()
        check_folders(settings)
        return settings, secret

    try:
        settings, secret = load()
    except ConfigError as exc:
        print(f"p2pd: configuration error: {exc}", file=sys.stderr)
        return 2
    if (warning := exposed_secret_file(settings)) is not None:
        logging.getLogger("p2pd").warning("%s", warning)
    # Imported only once the configuration is known good: a config error
    # should answer fast, without loading TLS, watchdog and HTTP machinery.
    import trio

    from p2pd.control import ControlSocketInUse
    from p2pd.daemon import Daemon, StartupError

    started_with = config_path.absolute() if config_path is not None else None
    try:
        trio.run(Daemon(settings, secret, reload=load, config_path=started_with).run)
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
