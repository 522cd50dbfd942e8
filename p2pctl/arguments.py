"""p2pctl's full argument parser (argparse): loaded only for what `quick_args` in
p2pctl.main does not read itself — ``--help``, usage errors, the doctor, and the
commands with options — so that the common calls start without argparse."""

from __future__ import annotations

import argparse
import os

from p2pctl.main import DEFAULT_SOCKET


def parser(by_sha256: bool = False) -> argparse.ArgumentParser:
    """The full parser; ``by_sha256``: for a `fetch --sha256`, which takes no PEER FILE.

    (Optional positionals would make argparse refuse `fetch bob --detach a.txt`.)
    """
    top = argparse.ArgumentParser(
        prog="p2pctl", description="Control p2pd, the p2p file-sharing daemon."
    )
    top.add_argument(
        "--socket", default=os.environ.get("P2PD_SOCKET", DEFAULT_SOCKET), help="control socket"
    )
    top.add_argument("--json", action="store_true", help="print one JSON document")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("status", help="this daemon's state")
    commands.add_parser("peers", help="the other members online").add_argument(
        "pattern",
        metavar="PATTERN",
        nargs="?",
        help="only members whose name or id contains it (a glob if it has * ? or [)",
    )
    commands.add_parser("ls", help="files shared by a member").add_argument("peer", metavar="PEER")
    commands.add_parser("shared", help="files this daemon shares")
    commands.add_parser("rescan", help="rescan the shared folder now")
    fetch = commands.add_parser(
        "fetch",
        help="download a file from a member, or content by its sha256 from every member with it",
        usage="p2pctl fetch [--detach] (PEER FILE | --sha256 HEX [--name NAME])",
    )
    optional = "?" if by_sha256 else None
    fetch.add_argument("peer", metavar="PEER", nargs=optional)
    fetch.add_argument(
        "file", metavar="FILE", nargs=optional, help="a file, or a folder ending in '/'"
    )
    fetch.add_argument("--detach", action="store_true", help="return the transfer id at once")
    fetch.add_argument("--sha256", metavar="HEX", help="the content's sha256 (64 hex digits)")
    fetch.add_argument("--name", metavar="NAME", help="with --sha256: the file's name here")
    search = commands.add_parser("search", help="search every member's files")
    search.add_argument(
        "pattern", metavar="PATTERN", nargs="*", help="terms ('-word' excludes), or a glob"
    )
    search.add_argument("--sha256", metavar="PREFIX", help="8 to 64 hex digits of the sha256")
    search.add_argument("--min-size", type=int, metavar="BYTES", help="at least this size")
    search.add_argument("--max-size", type=int, metavar="BYTES", help="at most this size")
    search.add_argument(
        "--timeout", type=float, default=5.0, metavar="S", help="seconds to wait (default 5)"
    )
    commands.add_parser("downloads", help="transfers in progress")
    commands.add_parser("history", help="finished transfers")
    commands.add_parser("cancel", help="cancel a transfer").add_argument("id", metavar="ID")
    doctor = commands.add_parser("doctor", help="check that p2pd can run here, and how to fix it")
    doctor.add_argument(
        "--config", metavar="PATH", help="p2pd's config (default: $P2PD_CONFIG or /etc/p2pd.toml)"
    )
    doctor.add_argument("--user", default="p2pd", help="the user p2pd runs as (default: p2pd)")
    return top
