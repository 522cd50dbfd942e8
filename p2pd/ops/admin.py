"""Administration commands: ``p2pd config init`` and ``p2pd install``.

``config init`` writes a first /etc/p2pd.toml; ``install`` writes the systemd
drop-in that opens the configured folders to the hardened service
(``ProtectSystem=strict`` makes everything read-only and ``ProtectHome=yes``
hides /home, so each folder the daemon uses must be named).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

from p2pcommon.configfile import Key, add_init_command, check_and_write, render, run_admin
from p2pcommon.lifecycle import ConfigError
from p2pcommon.settings import load_settings
from p2pd.config import DEFAULT_PATH, PeerSettings

DROPIN_DIR = "/etc/systemd/system/p2pd.service.d"
DROPIN_NAME = "folders.conf"
#: What the unit itself makes writable (StateDirectory=, RuntimeDirectory=).
UNIT_STATE_DIR = PurePosixPath("/var/lib/p2pd")
UNIT_RUNTIME_DIR = PurePosixPath("/run/p2pd")
#: Hidden by ProtectHome=yes; visible again only through bind mounts.
HOME_ROOTS = (PurePosixPath("/home"), PurePosixPath("/root"), PurePosixPath("/run/user"))
#: The file the unit passes as the credential 'secret' (LoadCredential= in p2pd.service).
SERVICE_SECRET = PurePosixPath("/etc/p2pd/secret")


def admin_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="p2pd", description="p2pd administration")
    commands = parser.add_subparsers(dest="command", required=True)

    init = add_init_command(commands, os.environ.get("P2PD_CONFIG", DEFAULT_PATH))
    init.add_argument("--share", required=True, metavar="DIR", help="folder shared with members")
    init.add_argument("--downloads", required=True, metavar="DIR", help="where downloads land")
    init.add_argument(
        "--registry",
        action="append",
        required=True,
        metavar="URL",
        help="registry URL; repeat for fail-over",
    )
    init.add_argument(
        "--secret-file",
        metavar="FILE",
        help=f"the shared secret, for p2pd run by hand; the service gets {SERVICE_SECRET} "
        "as its systemd credential, so leave this out for it",
    )
    init.add_argument("--name", help="display name (default: the host name)")
    init.add_argument("--listen", help="peer server address host:port (default 0.0.0.0:7070)")

    install = commands.add_parser(
        "install", help=f"write {DROPIN_DIR}/{DROPIN_NAME} for the configured folders"
    )
    install.add_argument("--config", metavar="FILE", help=f"TOML config (default {DEFAULT_PATH})")
    install.add_argument("--unit-dir", default=DROPIN_DIR, metavar="DIR", help=argparse.SUPPRESS)

    args = parser.parse_args(argv)
    if args.command == "config":
        text = config_text(args)
        return run_admin(
            "p2pd", lambda: check_and_write(text, PeerSettings, args.output, force=args.force)
        )
    return run_admin("p2pd", lambda: install_dropin(args.config, Path(args.unit_dir)))


def config_text(args: argparse.Namespace) -> str:
    keys = [
        Key("name", "Display name shown to the other members.", args.name, "this-host"),
        # Absolute: a relative path in the file is taken from the file's folder,
        # while on the command line it meant the working directory.
        Key(
            "share_dir",
            "Folder shared with the members (read only).\n"
            "Relative paths in this file are taken from this file's folder.",
            str(Path(args.share).absolute()),
        ),
        Key(
            "download_dir",
            "Where downloads land; partial files are hidden there until verified.",
            str(Path(args.downloads).absolute()),
        ),
        Key("registries", "Registry URLs, tried in order.", list(args.registry)),
        Key(
            "secret_file",
            "The secret shared by all members and registries (or set 'secret' inline).\n"
            f"The service does not need it: it gets {SERVICE_SECRET} (root's alone) as\n"
            "the systemd credential 'secret', which wins over this key.",
            str(Path(args.secret_file).absolute()) if args.secret_file else None,
            example="/path/to/secret",
        ),
        Key("listen", "Peer server address.", args.listen, "0.0.0.0:7070"),
        Key(
            "advertise",
            "Addresses given to the other members; default: as the registry sees us.",
            example=["192.0.2.10:7070"],
        ),
        Key("state_dir", "Identity, index cache and history.", example="/var/lib/p2pd"),
        Key("control_socket", "p2pctl's socket.", example="/run/p2pd/control.sock"),
        Key("heartbeat_interval", "Seconds between heartbeats.", example=10),
        Key("upload_slots", "Uploads served at once.", example=8),
        Key("upload_rate_limit", "Bytes/s for all uploads together; 0 = no limit.", example=0),
        Key("stable_after", "Seconds a file must stay unchanged before it is offered.", example=2),
        Key("metrics_listen", "Prometheus metrics at host:port; empty = off.", example=""),
    ]
    return render(
        "p2pd configuration (README: Configuration); `systemctl reload p2pd` applies it.", keys
    )


def folders_dropin(settings: PeerSettings) -> str:
    """The drop-in text that lets the hardened unit use the configured folders."""
    read_only = [PurePosixPath(settings.share_dir)]
    writable = [PurePosixPath(settings.download_dir)]
    if not _within(PurePosixPath(settings.state_dir), UNIT_STATE_DIR):
        writable.append(PurePosixPath(settings.state_dir))
    socket_dir = PurePosixPath(settings.control_socket).parent
    if not _within(socket_dir, UNIT_RUNTIME_DIR):
        writable.append(socket_dir)
    lines = [
        "# Written by `p2pd install` from the folders in the p2pd config;",
        "# run it again after changing them, then `systemctl restart p2pd`.",
        "[Service]",
    ]
    in_home = [p for p in read_only + writable if any(_within(p, h) for h in HOME_ROOTS)]
    if in_home:
        # ProtectHome=yes would hide them: mount an empty /home instead and
        # bind only these folders into it.
        lines.append("ProtectHome=tmpfs")
    for path in read_only:
        if path in in_home:
            lines.append(f"BindReadOnlyPaths={_quoted(path)}")
    for path in writable:
        directive = "BindPaths" if path in in_home else "ReadWritePaths"
        lines.append(f"{directive}={_quoted(path)}")
    return "\n".join(lines) + "\n"


def install_dropin(config: str | None, unit_dir: Path) -> None:
    settings, path = load_settings(PeerSettings, explicit_path=config, default_path=DEFAULT_PATH)
    if path is None:
        raise ConfigError(f"no config file at {DEFAULT_PATH}: write one with `p2pd config init`")
    unit_dir.mkdir(parents=True, exist_ok=True)
    target = unit_dir / DROPIN_NAME
    target.write_text(folders_dropin(settings), encoding="utf-8")
    print(f"wrote {target} for {settings.share_dir} and {settings.download_dir}", file=sys.stderr)
    if Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], check=False)
        print("next: systemctl restart p2pd", file=sys.stderr)


def dropin_problem(settings: PeerSettings, unit_dir: Path = Path(DROPIN_DIR)) -> str | None:
    """Why the installed service could not use the configured folders, or None."""
    try:
        current = (unit_dir / DROPIN_NAME).read_text(encoding="utf-8")
    except FileNotFoundError:
        return f"{unit_dir / DROPIN_NAME} is missing: the service cannot reach the folders"
    if current != folders_dropin(settings):
        return f"{unit_dir / DROPIN_NAME} does not match the folders in the config"
    return None


def _within(path: PurePosixPath, root: PurePosixPath) -> bool:
    return path == root or root in path.parents


def _quoted(path: PurePosixPath) -> str:
    # "-": a missing folder must not stop the unit with an opaque NAMESPACE
    # error; p2pd then says which key names it.  systemd splits these lists on
    # whitespace; quotes keep a path with spaces whole.
    text = f"-{path}"
    return f'"{text}"' if any(c.isspace() for c in text) else text
