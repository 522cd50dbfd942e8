"""p2pctl: talk to p2pd over its control socket (JSON-RPC 2.0, one object per line).

Standard library only, so that it starts fast: every command is a process. For
the same reason it imports at the top only what ``p2pctl status`` needs
(tests/p2pctl/test_startup.py holds the list): argparse, typing, contextlib, json
(p2pctl.wirejson says why) and the doctor's modules are imported where they are
used.
"""

from __future__ import annotations

import _socket
import os
import sys
from types import SimpleNamespace

from p2pctl import wirejson
from p2pctl.output import human_size, print_json, show

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing alone costs a few ms at every start: only mypy needs it
    import argparse
    from collections.abc import Callable
    from typing import Any, NoReturn, TypeAlias

    #: What argparse parsed, or what `quick_args` read the same way.
    Args: TypeAlias = argparse.Namespace | SimpleNamespace

DEFAULT_SOCKET = "/run/p2pd/control.sock"

# Exit statuses (docs/protocol.md §7), in one place.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class CtlError(Exception):
    def __init__(
        self,
        message: str,
        exit_status: int,
        *,
        printed: bool = False,
        outcome: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.exit_status = exit_status
        #: The --json document was printed already (a failed fetch's outcome).
        self.printed = printed
        #: A refused fetch's outcome, as the daemon recorded it in the history.
        self.outcome = outcome


def unreachable(path: str, exc: OSError) -> CtlError:
    why = {
        "FileNotFoundError": "no such socket",
        "PermissionError": "permission denied (join the p2pd group: sudo usermod -aG p2pd $USER)",
        "ConnectionRefusedError": "nothing is listening",
    }.get(type(exc).__name__, exc.strerror or str(exc))
    if path == DEFAULT_SOCKET:
        # The service's socket (RuntimeDirectory=p2pd): the service is what is down.
        advice = (
            "Start the service with `sudo systemctl start p2pd`, or point at another daemon "
            "with --socket PATH or P2PD_SOCKET."
        )
    else:
        # Only a p2pd run by hand (or another unit) listens elsewhere.
        advice = (
            f'Start the p2pd whose config says control_socket = "{path}" '
            "(`p2pd --config FILE`), or check --socket and P2PD_SOCKET: "
            f"without them p2pctl uses {DEFAULT_SOCKET}."
        )
    return CtlError(f"cannot reach p2pd at {path}: {why}.\n{advice}", EXIT_UNREACHABLE)


#: Seconds p2pctl waits for any line from the daemon (a waiting fetch gets
#: progress twice a second, and the daemon bounds every exchange with a peer).
ANSWER_TIMEOUT = 60.0
RECEIVE_SIZE = 256 * 1024


class Client:
    def __init__(self, path: str, timeout: float | None = ANSWER_TIMEOUT) -> None:
        self.path = path
        # _socket, the C module under socket: socket.py builds enums of every
        # constant and imports selectors, ~2.5 ms of a ~20 ms `p2pctl status`.
        self._sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError as exc:
            self._sock.close()
            raise unreachable(path, exc) from None
        self._unread = b""
        self._next_id = 0

    def close(self) -> None:
        self._sock.close()

    def _readline(self) -> bytes:
        """The next line, with its newline; at EOF what is left (b"" if nothing)."""
        parts = [self._unread]
        end = self._unread.find(b"\n")
        while end < 0:
            chunk = self._sock.recv(RECEIVE_SIZE)
            if not chunk:
                self._unread = b""
                return b"".join(parts)
            parts.append(chunk)
            end = chunk.find(b"\n")
        last = parts.pop()
        parts.append(last[: end + 1])
        self._unread = last[end + 1 :]
        return b"".join(parts)

    def call(
        self,
        method: str,
        params: dict[str, Any],
        on_notify: Callable[[dict[str, Any]], None] | None = None,
    ) -> Any:
        self._next_id += 1
        message = {"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params}
        try:
            self._sock.sendall(wirejson.dumps(message).encode() + b"\n")
            while True:
                line = self._readline()
                if not line:
                    raise CtlError(f"p2pd at {self.path} closed the connection", EXIT_FAILED)
                try:
                    answer = wirejson.loads(line)
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
    data = error.get("data")
    data = data if isinstance(data, dict) else {}
    for candidate in data.get("candidates") or []:
        message += f"\n  {candidate.get('id', '')[:7]}  {candidate.get('name', '')}"
    outcome = data.get("outcome")
    return CtlError(message, EXIT_FAILED, outcome=outcome if isinstance(outcome, dict) else None)


def fetch(client: Client, args: Args, params: dict[str, Any]) -> Any:
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
            import contextlib

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


# -- commands -----------------------------------------------------------------


#: The positionals of the commands `quick_args` reads (the doctor's are argparse's).
POSITIONALS = {
    **dict.fromkeys(("status", "shared", "rescan", "downloads", "history"), ()),
    "peers": ("pattern",),
    "ls": ("peer",),
    "fetch": ("peer", "file"),
    "cancel": ("id",),
}

#: The commands whose positionals may all be left out (then None).
OPTIONAL_POSITIONAL = {"peers"}


def quick_args(argv: list[str]) -> SimpleNamespace | None:
    """The common calls read without argparse, or None: then argparse reads them.

    Importing argparse and building the parser cost more than the rest of a
    `p2pctl status`. This reads only ``[--socket PATH | --socket=PATH |
    --json]... COMMAND [ARG | --detach]...`` with arguments that are neither
    empty nor start with '-', which argparse reads the same way
    (tests/p2pctl/test_startup.py compares them); anything else, including
    every error and ``--help``, is argparse's.
    """
    socket_path = os.environ.get("P2PD_SOCKET", DEFAULT_SOCKET)
    as_json = False
    i = 0
    while i < len(argv) and argv[i] not in POSITIONALS:
        arg = argv[i]
        if arg == "--json":
            as_json = True
        elif arg == "--socket" and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            i += 1
            socket_path = argv[i]
        elif arg.startswith("--socket="):
            socket_path = arg.removeprefix("--socket=")
        else:
            return None
        i += 1
    if i == len(argv):
        return None
    command = argv[i]
    values: dict[str, object] = {"socket": socket_path, "json": as_json, "command": command}
    if command == "fetch":
        values.update(detach=False, sha256=None, name=None)
    positionals = []
    for arg in argv[i + 1 :]:
        if command == "fetch" and arg == "--detach":
            values["detach"] = True
        elif arg and not arg.startswith("-"):
            positionals.append(arg)
        else:
            return None
    names = POSITIONALS[command]
    if command in OPTIONAL_POSITIONAL and not positionals:
        values.update(dict.fromkeys(names))
    elif len(positionals) != len(names):
        return None
    else:
        values.update(zip(names, positionals, strict=True))
    return SimpleNamespace(**values)


def parse(argv: list[str] | None) -> Args:
    argv = sys.argv[1:] if argv is None else argv
    quick = quick_args(argv)
    if quick is not None:
        return quick
    from p2pctl.arguments import parser

    top = parser(by_sha256=any(arg.startswith("--sha") for arg in argv))
    args = top.parse_args(argv)  # exits 2 on usage errors
    for name in ("peer", "file", "id"):
        if getattr(args, name, None) == "":
            top.error(f"{name.upper()} must not be empty")  # exits 2
    if args.command in ("fetch", "search"):
        from p2pctl.search import usage_problem

        problem = usage_problem(args)
        if problem:
            top.error(problem)  # exits 2
    return args


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


def doctor(args: Args) -> int:
    # Imported here: pydantic and trio (and dataclasses, which imports inspect)
    # would slow every other command's start.
    import dataclasses

    from p2pd.ops.doctor import run_checks

    results = run_checks(args.config, args.user, [args.socket], daemon_status)
    if args.json:
        print_json([dataclasses.asdict(r) for r in results])
    else:
        width = max(len(r.check) for r in results)
        for result in results:
            print(f"{DOCTOR_MARKS[result.status]:<4}  {result.check:<{width}}  {result.message}")
            if result.fix and result.status in ("problem", "warning"):
                print(f"{'':6}fix: {result.fix}")
    return EXIT_FAILED if any(r.status == "problem" for r in results) else EXIT_OK


def run(args: Args) -> None:
    client = Client(args.socket)
    command = args.command
    params: dict[str, Any] = {}
    if command == "ls":
        params = {"peer": args.peer}
    elif command == "peers" and args.pattern:
        params = {"pattern": args.pattern}
    elif command == "search":
        from p2pctl.search import run_search

        run_search(client, args)
        return
    elif command == "fetch" and args.sha256 is not None:
        params = {"sha256": args.sha256.lower(), "detach": args.detach}
        if args.name is not None:
            params["name"] = args.name
        if not args.detach:
            params["progress"] = True
    elif command == "fetch":
        params = {"peer": args.peer, "path": args.file, "detach": args.detach}
        if not args.detach:
            # Progress is sent only on request; waiting, p2pctl needs it for the
            # bar and for the transfer ids that Ctrl-C cancels (also with --json).
            params["progress"] = True
    elif command == "cancel":
        params = {"id": args.id}
    try:
        if command == "fetch" and not args.detach:
            result = fetch(client, args, params)
        else:
            result = client.call(command, params)
    except CtlError as exc:
        if args.json and exc.outcome is not None:
            # A fetch refused before any transfer: its outcome, as the history
            # has it, like that of a transfer that failed (a list for a folder).
            folder = (args.file or "").endswith("/")
            print_json([exc.outcome] if folder else exc.outcome)
            exc.printed = True
        raise
    outcomes = (result if isinstance(result, list) else [result]) if command == "fetch" else []
    failures = [o for o in outcomes if o.get("status") not in (None, "ok")]
    if args.json:
        print_json(result)
    else:
        show(command, result, outcomes)
    if failures:
        raise CtlError(f"fetch failed: {failures[0].get('error')}", EXIT_FAILED, printed=True)


def fail(message: str, status: int) -> NoReturn:
    print(f"p2pctl: {message}", file=sys.stderr)
    sys.exit(status)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        if args.command == "doctor":
            return doctor(args)
        run(args)
    except CtlError as exc:
        if args.json and not exc.printed:
            # Still exactly one JSON document on stdout, for scripts.
            print_json({"error": str(exc), "exit_status": exc.exit_status})
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
