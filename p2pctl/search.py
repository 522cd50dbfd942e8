"""``p2pctl search``: results as they arrive on a terminal, then grouped by content.

The daemon sends "search" notifications (the counts, and the matches since
the last one) while it asks the members, then one document: ``results`` (one
entry per content, most sources first) and the counts.  On a terminal the
matches are shown as they arrive, one line per content first seen, on
stderr; the final table replaces them (stdout), followed by the counts.
"""

from __future__ import annotations

import sys

from p2pctl.output import human_size, print_json, printable, table

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO

    from p2pctl.main import Args, Client

#: Lines of arriving matches shown at most (then only the counts move).
LIVE_LINES = 15
#: Members named per row at most.
NAMED_MEMBERS = 3


def counts_line(counts: dict[str, Any], timeout: float | None = None) -> str:
    """How many members were asked, answered, silent or refused; why it is partial."""
    members, asked = counts.get("members", 0), counts.get("asked", 0)
    line = (
        f"asked {asked} of {members} members: {counts.get('answered', 0)} answered, "
        f"{counts.get('silent', 0)} silent, {counts.get('refused', 0)} refused"
    )
    if counts.get("partial"):
        missing = members - asked
        why = "the deadline passed" if timeout is None else f"the {timeout:g} s deadline passed"
        line += f"; partial: {why}" + (f" before {missing} were asked" if missing > 0 else "")
        if counts.get("left_out"):
            line += f", {counts['left_out']} matches left out"
        line += " (a longer --timeout reaches more)"
    return line


class LiveView:
    """What arrives, on a terminal: one line per new content, and the counts below."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.seen: set[str] = set()
        self.lines = 0
        self.status = ""

    def update(self, notification: dict[str, Any]) -> None:
        self._clear_status()
        for match in notification.get("found") or []:
            sha256 = str(match.get("sha256", ""))
            if sha256 in self.seen or self.lines >= LIVE_LINES:
                continue
            self.seen.add(sha256)
            self.lines += 1
            size = human_size(match.get("size", 0))
            path, name = printable(str(match.get("path"))), printable(str(match.get("name")))
            self.stream.write(f"{size:>10}  {path}  ({name})\n")
        self.status = counts_line(notification)
        self.stream.write(self.status)
        self.stream.flush()

    def _clear_status(self) -> None:
        if self.status:
            self.stream.write("\r\x1b[K")

    def clear(self) -> None:
        """Take the live lines away: the final table says it all, sorted."""
        self._clear_status()
        if self.lines:
            self.stream.write(f"\x1b[{self.lines}F\x1b[J")
        self.stream.flush()


def show_search(result: dict[str, Any]) -> str:
    rows = []
    for content in result.get("results") or []:
        members = content.get("members") or []
        names = [str(m.get("name")) for m in members[:NAMED_MEMBERS]]
        if len(members) > NAMED_MEMBERS:
            names.append(f"+{len(members) - NAMED_MEMBERS}")
        all_names = content.get("names") or ["?"]
        name = str(all_names[0]) + (f" (+{len(all_names) - 1} names)" if len(all_names) > 1 else "")
        rows.append(
            [
                str(len(members)),
                human_size(content.get("size", 0)),
                str(content.get("sha256", ""))[:12],
                name,
                ", ".join(names),
            ]
        )
    if not rows:
        return "no match"
    return table(["SOURCES", "SIZE", "SHA256", "NAME", "MEMBERS"], rows, right=frozenset({0, 1}))


def search_params(args: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"progress": True, "timeout": args.timeout}
    if args.pattern:
        params["pattern"] = " ".join(args.pattern)
    if args.sha256:
        params["sha256"] = args.sha256.lower()
    for name in ("min_size", "max_size"):
        if getattr(args, name, None) is not None:
            params[name] = getattr(args, name)
    return params


def print_search(result: dict[str, Any], timeout: float) -> None:
    print(show_search(result))
    print(counts_line(result, timeout))
    print_more(result)


def print_more(result: dict[str, Any]) -> None:
    if result.get("more"):
        print(
            f"{result['more']} members had more than 100 matches: narrow the pattern",
            file=sys.stderr,
        )


def run_search(client: Client, args: Args) -> None:
    """Ask the daemon, show what arrives on a terminal, print the result."""
    live = LiveView(sys.stderr) if sys.stderr.isatty() and not args.json else None
    try:
        result = client.call(
            "search", search_params(args), on_notify=None if live is None else live.update
        )
    finally:
        if live is not None:
            live.clear()
    if args.json:
        print_json(result)
    else:
        print_search(result, args.timeout)


def usage_problem(args: Args) -> str | None:
    """What is wrong with a fetch's or a search's arguments (exit status 2), or None."""
    return fetch_usage(args) if args.command == "fetch" else search_usage(args)


def fetch_usage(args: Args) -> str | None:
    """What is wrong with a fetch's arguments, or None."""
    if args.sha256 is None:
        if args.name is not None:
            return "--name goes with --sha256; a fetch by PEER FILE keeps the file's name"
        if args.peer is None or args.file is None:
            return "fetch needs PEER FILE, or --sha256 HEX"
        return None
    if args.peer is not None:
        return "fetch takes either PEER FILE or --sha256 HEX, not both"
    if not is_hex(args.sha256, 64, 64):
        return "--sha256 needs the content's whole sha256: 64 hex digits"
    if args.name is not None and (not args.name or "/" in args.name or args.name in (".", "..")):
        return "--name is a file name: not empty, no '/', not '.' or '..'"
    return None


def search_usage(args: Args) -> str | None:
    if not args.pattern and args.sha256 is None and args.min_size is None and args.max_size is None:
        return "search needs a PATTERN, --sha256 PREFIX or a size (--min-size, --max-size)"
    if args.sha256 is not None and not is_hex(args.sha256, 8, 64):
        return "--sha256 needs 8 to 64 hex digits of the content's sha256"
    if not 0 < args.timeout <= 60:
        return "--timeout is in seconds: above 0, at most 60"
    for name in ("min_size", "max_size"):
        if (getattr(args, name) or 0) < 0:
            return f"--{name.replace('_', '-')} is a number of bytes: 0 or more"
    return None


def is_hex(text: str, shortest: int, longest: int) -> bool:
    return shortest <= len(text) <= longest and all(c in "0123456789abcdefABCDEF" for c in text)
