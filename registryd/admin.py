"""``registryd config init``: write a first, commented /etc/registryd.toml."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from p2pcommon.configfile import Key, add_init_command, check_and_write, render, run_admin
from registryd.config import DEFAULT_PATH, RegistrySettings


def admin_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="registryd", description="registryd administration")
    commands = parser.add_subparsers(dest="command", required=True)
    init = add_init_command(commands, os.environ.get("REGISTRYD_CONFIG", DEFAULT_PATH))
    init.add_argument("--listen", help="address host:port (default 0.0.0.0:7000)")
    init.add_argument(
        "--secret-file",
        metavar="FILE",
        help="the shared secret (default: the systemd credential 'secret')",
    )
    init.add_argument(
        "--store",
        help="'memory', or a redis:// or redis+sentinel:// URL shared by several registries",
    )
    init.add_argument("--peer-ttl", type=float, metavar="SECONDS", help="lease of a member")
    args = parser.parse_args(argv)
    text = config_text(args)
    return run_admin(
        "registryd",
        lambda: check_and_write(text, RegistrySettings, args.output, force=args.force),
    )


def config_text(args: argparse.Namespace) -> str:
    keys = [
        Key("listen", "Address of the registry's HTTP API.", args.listen, "0.0.0.0:7000"),
        Key(
            "secret_file",
            "The secret shared with every member. Under systemd it comes instead as the\n"
            "credential 'secret' (LoadCredential=secret:/etc/registryd/secret).\n"
            "A relative path is taken from this file's folder.",
            # Absolute: as given on the command line, it meant the working directory.
            str(Path(args.secret_file).absolute()) if args.secret_file else None,
            "/etc/registryd/secret",
        ),
        Key(
            "store",
            "'memory', or a redis:// (or redis+sentinel://) URL so that several registries "
            "share one view.",
            args.store,
            "memory",
        ),
        Key(
            "peer_ttl",
            "Seconds a member stays a member without a heartbeat while the network is small\n"
            "(members heartbeat every peer_ttl / 3 then).",
            args.peer_ttl,
            30.0,
        ),
        Key(
            "heartbeat_budget",
            "Heartbeats a second one registry process is given: past it, the advised\n"
            "interval grows with the members (docs/protocol.md §3.3) ...",
            example=200.0,
        ),
        Key("max_heartbeat_interval", "... up to this many seconds.", example=60.0),
        Key(
            "tls_cert",
            "Serve HTTPS with this certificate chain (PEM) ...",
            example="/etc/registryd/cert.pem",
        ),
        Key("tls_key", "... and this private key.", example="/etc/registryd/key.pem"),
    ]
    return render("registryd configuration (README: Configuration).", keys)
