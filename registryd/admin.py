"""``registryd config init``: write a first, commented /etc/registryd.toml."""

from __future__ import annotations

import argparse
import os
import sys

from p2pcommon.configfile import Key, add_output_arguments, check_and_write, render
from p2pcommon.settings import ConfigError
from registryd.config import DEFAULT_PATH, RegistrySettings


def admin_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="registryd", description="registryd administration")
    commands = parser.add_subparsers(dest="command", required=True)
    config = commands.add_parser("config", help="configuration files")
    config_commands = config.add_subparsers(dest="action", required=True)
    init = config_commands.add_parser("init", help="write a first, commented /etc/registryd.toml")
    init.add_argument("--listen", help="address host:port (default 0.0.0.0:7000)")
    init.add_argument(
        "--secret-file",
        metavar="FILE",
        help="the shared secret (default: the systemd credential 'secret')",
    )
    init.add_argument("--store", help="'memory' or a redis:// URL shared by several registries")
    init.add_argument("--peer-ttl", type=float, metavar="SECONDS", help="lease of a member")
    add_output_arguments(init, os.environ.get("REGISTRYD_CONFIG", DEFAULT_PATH))
    args = parser.parse_args(argv)
    try:
        check_and_write(config_text(args), RegistrySettings, args.output, force=args.force)
    except ConfigError as exc:
        print(f"registryd: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"registryd: {exc.filename or ''}: {exc.strerror} (run as root?)", file=sys.stderr)
        return 1
    return 0


def config_text(args: argparse.Namespace) -> str:
    keys = [
        Key("listen", "Address of the registry's HTTP API.", args.listen, "0.0.0.0:7000"),
        Key(
            "secret_file",
            "The secret shared with every member. Under systemd it comes instead as the\n"
            "credential 'secret' (LoadCredential=secret:/etc/registryd/secret).",
            args.secret_file,
            "/etc/registryd/secret",
        ),
        Key(
            "store",
            "'memory', or a redis:// URL so that several registries share one view.",
            args.store,
            "memory",
        ),
        Key("peer_ttl", "Seconds a member stays listed without a heartbeat.", args.peer_ttl, 30.0),
        Key(
            "tls_cert",
            "Serve HTTPS with this certificate chain (PEM) ...",
            example="/etc/registryd/cert.pem",
        ),
        Key("tls_key", "... and this private key.", example="/etc/registryd/key.pem"),
    ]
    return render("registryd configuration (DESIGN §6).", keys)
