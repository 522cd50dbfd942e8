"""p2pctl: talk to p2pd over its control socket (JSON-RPC 2.0, one object per line).

Standard library only, so that it starts fast: every command is a process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

DEFAULT_SOCKET = "/run/p2pd/control.sock"

# Exit statuses (docs/protocol.md §7), in one place.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class CtlError(Exception):
    def __init__(self, message: str, exit_status: int, *, printed: bool = False) -> None:
        super().__init__(message)
        self.exit_status = exit_status
        #: The --json document was printed already (a failed fetch's outcome).
        self.printed = printed


def unreachable(path: str, exc: OSError) -> CtlError:
    why = {
        "FileNotFoundError": "no such socket",
        "PermissionError": "permission denied (join the p2pd group: sudo usermod -aG p2pd $USER)",
        "ConnectionRefusedError": "nothing is listening",
    }.get(type(exc).__name__, exc.strerror or str(exc))
    return CtlError(
        f"cannot reach p2pd at {path}: {why}.\n"
        "Start the service with `sudo systemctl start p2pd`, or point at another daemon "
        "with --socket PATH or P2PD_SOCKET.",
        EXIT_UNREACHABLE,
    )


#: Seconds p2pctl waits for any line from the daemon (a waiting fetch gets
#: progress twice a second, and the daemon bounds every exchange with a peer).
ANSWER_TIMEOUT = 60.0


class Client:
    def __init__(self, path: str, timeout: float | None = ANSWER_TIMEOUT) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError as exc:
            raise unreachable(path, exc) from None
        self._file = self._sock.makefile("rb")
        self._next_id = 0

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def call(
        self,
        method: str,
        params: dict[str, Any],
        on_notify: Callable[[dict[str, Any]], None] | None = None,
    ) -> Any:
        self._next_id += 1
        message = {"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params}
        try:
            self._sock.sendall(json.dumps(message).encode() + b"\n")
            while True:
                line = self._file.readline()
                if not line:
                    raise CtlError(f"p2pd at {self.path} closed the connection", EXIT_FAILED)
                try:
                    answer = json.loads(line)
                except ValueError:
                    raise CtlError(
                        f"{self.path} answered something that is not JSON-RPC: is it p2pd's?",
                        EXIT_FAILED,
                    ) from None
                if not isinstance(answer, dict):
                    raise CtlError(f"{self.path} answered an unexpected message", EXIT_FAILED)
                if "id" not in answer:
                    if on_notify is not None:
                        on_notify(answer.get("params", {}))
                    continue
                if "error" in answer:
                    raise _refused(answer["error"])
                return answer["result"]
        except TimeoutError:
            raise CtlError(
                f"p2pd at {self.path} did not answer within {self._sock.gettimeout():g} s; "
                "it may be overloaded or stuck: see `journalctl -u p2pd`",
                EXIT_FAILED,
            ) from None
        except OSError as exc:
            raise CtlError(
                f"lost the connection to p2pd at {self.path}: {exc}", EXIT_FAILED
            ) from None


def _refused(error: dict[str, Any]) -> CtlError:
    message = str(error.get("message", "the daemon refused"))
    if error.get("code") == -32601:
        message += " (is p2pd older than this p2pctl?)"
    candidates = (error.get("data") or {}).get("candidates") or []
    for candidate in candidates:
        message += f"\n  {candidate.get('id', '')[:7]}  {candidate.get('name', '')}"
    return CtlError(message, EXIT_FAILED)


# -- human output -------------------------------------------------------------


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def ago(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    seconds = max(0, time.time() - timestamp)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def printable(text: str) -> str:
    """``text`` with control characters escaped, as ``ls`` shows names on a terminal.

    A name from a member or a share may hold ESC sequences or newlines; printed
    raw they would recolour the terminal or forge rows. ``--json`` stays exact.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def table(
    headers: Sequence[str], rows: list[list[str]], right: frozenset[int] = frozenset()
) -> str:
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def show_status(status: dict[str, Any]) -> str:
    registered = "yes" if status.get("registered") else (status.get("registry_error") or "no")
    lines = [
        ("name", f"{status['name']} ({status['id'][:7]})"),
        (
            "registered",
            f"{registered}" + (f" with {status['registry']}" if status.get("registry") else ""),
        ),
        ("peers", str(status.get("peers", "?"))),
        ("shared files", f"{status['shared_files']} in {status.get('share_dir', '?')}"),
        ("downloads to", str(status.get("download_dir", "?"))),
        ("listening on", status["listen"]),
        (
            "uploads",
            f"{status.get('uploads_active', 0)} of {status.get('upload_slots', '?')} slots",
        ),
        ("version", status["version"]),
    ]
    if status.get("indexing"):
        lines.insert(3, ("indexing", f"{status.get('hashed_files', 0)} files hashed so far"))
    if status.get("skipped_count"):
        examples = ", ".join(list(status.get("skipped") or {})[:3])
        lines.append(
            ("skipped", f"{status['skipped_count']} entries (e.g. {examples}): see the log")
        )
    failures = status.get("failures") or {}
    if failures:
        counted = ", ".join(f"{n} {kind}" for kind, n in sorted(failures.items()))
        lines.append(("contained failures", f"{counted}: see the log"))
    if status.get("history_error"):
        lines.insert(0, ("WARNING", status["history_error"]))
    if status.get("warning"):
        lines.insert(0, ("WARNING", status["warning"]))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k + ':':<{width + 1}} {printable(v)}" for k, v in lines)


def show_peers(peers: list[dict[str, Any]]) -> str:
    rows = [
        [p["id"][:7], p["name"], ", ".join(p["addresses"]), ago(p.get("last_seen"))] for p in peers
    ]
    return table(["ID", "NAME", "ADDRESSES", "SEEN"], rows)


def show_files(files: list[dict[str, Any]]) -> str:
    rows = [[human_size(f["size"]), f["sha256"][:12], f["path"]] for f in files]
    return table(["SIZE", "SHA256", "PATH"], rows, right=frozenset({0}))


def show_downloads(transfers: list[dict[str, Any]]) -> str:
    rows = [
        [
            t["id"],
            t["state"],
            f"{human_size(t['bytes_done'])} / {human_size(t['size'])}",
            f"{human_size(t.get('rate', 0))}/s",
            t["remote_path"],
        ]
        for t in transfers
    ]
    return table(["ID", "STATE", "DONE", "RATE", "FILE"], rows)


def show_history(outcomes: list[dict[str, Any]]) -> str:
    rows = [
        [
            ago(o.get("finished_at")),
            o["status"],
            human_size(o["size"]),
            o.get("peer_name") or o["peer_id"][:7],
            o["path"] + (f"  ({o['error']})" if o.get("error") else ""),
        ]
        for o in outcomes
    ]
    return table(["WHEN", "STATUS", "SIZE", "FROM", "PATH"], rows)


def fetch(client: Client, args: argparse.Namespace, params: dict[str, Any]) -> Any:
    """Wait for the transfer, drawing progress on a terminal; Ctrl-C cancels it."""
    shown: dict[str, Any] = {}
    draw = sys.stderr.isatty() and not args.json

    def progress(update: dict[str, Any]) -> None:
        shown.update(update)
        if draw:
            size, done, rate = update["size"], update["bytes_done"], update.get("rate") or 0
            width = 30
            filled = int(width * done / size) if size else width
            eta = f"{(size - done) / rate:.0f}s" if rate else "?"
            bar = "#" * filled + "-" * (width - filled)
            sys.stderr.write(
                f"\r[{bar}] {human_size(done)} / {human_size(size)}  "
                f"{human_size(rate)}/s  ETA {eta}   "
            )
            sys.stderr.flush()

    try:
        result = client.call("fetch", params, on_notify=progress)
    except KeyboardInterrupt:
        if "id" in shown:
            canceller = Client(args.socket)
            for transfer_id in str(shown["id"]).split(","):
                with contextlib.suppress(CtlError):  # that one had finished already
                    canceller.call("cancel", {"id": transfer_id})
            raise CtlError(f"cancelled transfer {shown['id']}", EXIT_FAILED) from None
        raise
    finally:
        if draw and shown:
            sys.stderr.write("\n")
    return result


EMPTY = {
    "peers": "no other members online",
    "ls": "the peer shares no files",
    "shared": "this daemon shares no files",
    "downloads": "no transfer in progress",
    "history": "no transfer yet",
}


# -- commands -----------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="p2pctl", description="Control p2pd, the p2p file-sharing daemon."
    )
    top.add_argument(
        "--socket", default=os.environ.get("P2PD_SOCKET", DEFAULT_SOCKET), help="control socket"
    )
    top.add_argument("--json", action="store_true", help="print one JSON document")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("status", help="this daemon's state")
    commands.add_parser("peers", help="the other members online")
    commands.add_parser("ls", help="files shared by a member").add_argument("peer", metavar="PEER")
    commands.add_parser("shared", help="files this daemon shares")
    commands.add_parser("rescan", help="rescan the shared folder now")
    fetch = commands.add_parser("fetch", help="download a file from a member")
    fetch.add_argument("peer", metavar="PEER")
    fetch.add_argument("file", metavar="FILE", help="a file, or a folder ending in '/'")
    fetch.add_argument("--detach", action="store_true", help="return the transfer id at once")
    commands.add_parser("downloads", help="transfers in progress")
    commands.add_parser("history", help="finished transfers")
    commands.add_parser("cancel", help="cancel a transfer").add_argument("id", metavar="ID")
    doctor = commands.add_parser("doctor", help="check that p2pd can run here, and how to fix it")
    doctor.add_argument(
        "--config", metavar="PATH", help="p2pd's config (default: $P2PD_CONFIG or /etc/p2pd.toml)"
    )
    doctor.add_argument("--user", default="p2pd", help="the user p2pd runs as (default: p2pd)")
    return top


DOCTOR_MARKS = {"ok": "ok", "warning": "WARN", "problem": "FAIL", "skipped": "skip"}


def daemon_status(path: str) -> dict[str, Any] | None:
    """The status of a p2pd answering on ``path``, or None if none answers."""
    try:
        client = Client(path, timeout=2)
    except CtlError:
        return None
    try:
        status = client.call("status", {})
    except (CtlError, ValueError):  # ValueError: not JSON, so not p2pd
        return None
    finally:
        client.close()
    return status if isinstance(status, dict) else None


def doctor(args: argparse.Namespace) -> int:
    # Imported here: pydantic and httpx (and dataclasses, which imports inspect)
    # would slow every other command's start.
    import dataclasses

    from p2pd.doctor import run_checks

    results = run_checks(args.config, args.user, [args.socket], daemon_status)
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in results], indent=2, ensure_ascii=False))
    else:
        width = max(len(r.check) for r in results)
        for result in results:
            print(f"{DOCTOR_MARKS[result.status]:<4}  {result.check:<{width}}  {result.message}")
            if result.fix and result.status in ("problem", "warning"):
                print(f"{'':6}fix: {result.fix}")
    return EXIT_FAILED if any(r.status == "problem" for r in results) else EXIT_OK


def run(args: argparse.Namespace) -> None:
    client = Client(args.socket)
    command = args.command
    params: dict[str, Any] = {}
    if command == "ls":
        params = {"peer": args.peer}
    elif command == "fetch":
        params = {"peer": args.peer, "path": args.file, "detach": args.detach}
        if not args.detach:
            # Progress is sent only on request; waiting, p2pctl needs it for the
            # bar and for the transfer ids that Ctrl-C cancels (also with --json).
            params["progress"] = True
    elif command == "cancel":
        params = {"id": args.id}
    if command == "fetch" and not args.detach:
        result = fetch(client, args, params)
    else:
        result = client.call(command, params)
    outcomes = (result if isinstance(result, list) else [result]) if command == "fetch" else []
    failures = [o for o in outcomes if o.get("status") not in (None, "ok")]
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        show(command, result, outcomes)
    if failures:
        raise CtlError(f"fetch failed: {failures[0].get('error')}", EXIT_FAILED, printed=True)


def show(command: str, result: Any, outcomes: list[dict[str, Any]]) -> None:
    """Human output of a command's result."""
    if isinstance(result, list) and not result and command in EMPTY:
        print(EMPTY[command], file=sys.stderr)
    elif command == "status":
        print(show_status(result))
    elif command == "peers":
        print(show_peers(result))
    elif command in ("ls", "shared"):
        print(show_files(result))
    elif command == "rescan":
        print(f"{result['shared_files']} files shared (generation {result['generation']})")
    elif command == "cancel":
        print(f"cancelled transfer {printable(str(result['id']))}")
    elif command == "fetch":
        for outcome in outcomes:
            if "status" not in outcome:
                print(f"transfer {outcome['id']} started: `p2pctl downloads` shows it")
            elif outcome["status"] == "ok":
                size = human_size(outcome["size"])
                path = printable(outcome["path"])
                print(f"{path}  {size}  sha256 {outcome['sha256']} verified")
    elif command == "downloads":
        print(show_downloads(result))
    elif command == "history":
        print(show_history(result))
    else:
        print(json.dumps(result, indent=2, ensure_ascii=False))


def fail(message: str, status: int) -> NoReturn:
    print(f"p2pctl: {message}", file=sys.stderr)
    sys.exit(status)


def main(argv: list[str] | None = None) -> int:
    top = parser()
    args = top.parse_args(argv)  # exits 2 on usage errors
    for name in ("peer", "file", "id"):
        if getattr(args, name, None) == "":
            top.error(f"{name.upper()} must not be empty")  # exits 2
    try:
        if args.command == "doctor":
            return doctor(args)
        run(args)
    except CtlError as exc:
        if args.json and not exc.printed:
            # Still exactly one JSON document on stdout, for scripts.
            print(json.dumps({"error": str(exc), "exit_status": exc.exit_status}))
        fail(str(exc), exc.exit_status)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `p2pctl history | head`: the reader is gone, which is no error of ours.
        # Point stdout at /dev/null so the interpreter's final flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
