"""p2pctl's human output: tables and summaries of the daemon's answers.

``--json`` prints the answers as they are; this module is for a terminal.
"""

from __future__ import annotations

import sys
import time

from p2pctl.wirejson import dumps_indented

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a few ms at every start: only mypy needs it
    from collections.abc import Sequence
    from typing import Any


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


def source_text(source: dict[str, Any], *, rates: bool = False) -> str:
    """One member's part of a transfer: ``bert 1.2 MiB`` (``at 3.0 MiB/s``, ``LIAR: …``)."""
    text = f"{source.get('name') or str(source.get('id', ''))[:7]} {human_size(source['bytes'])}"
    if rates and source.get("rate"):
        text += f" at {human_size(source['rate'])}/s"
    if source.get("liar"):
        text += f" LIAR ({source.get('bad_pieces', 0)} bad pieces)"
    elif rates and source.get("state") in ("resting", "dropped"):
        text += f" {source['state']}"
    return text


def sources_text(sources: list[dict[str, Any]] | None, *, rates: bool = False) -> str:
    """Every member that took part, or '' for a transfer from one member that kept its word."""
    sources = sources or []
    if len(sources) < 2 and not any(s.get("liar") for s in sources):
        return ""
    return ", ".join(source_text(s, rates=rates) for s in sources)


def show_downloads(transfers: list[dict[str, Any]]) -> str:
    rows = [
        [
            t["id"],
            t["state"],
            f"{human_size(t['bytes_done'])} / {human_size(t['size'])}",
            f"{human_size(t.get('rate', 0))}/s",
            t["remote_path"]
            + (f"  (from {many})" if (many := sources_text(t.get("sources"), rates=True)) else ""),
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
            _from(o),
            o["path"]
            + (f"  ({o['error']})" if o.get("error") else "")
            + ("  (already there)" if o.get("already_there") else ""),
        ]
        for o in outcomes
    ]
    return table(["WHEN", "STATUS", "SIZE", "FROM", "PATH"], rows)


def _from(outcome: dict[str, Any]) -> str:
    """The member it came from; for several, each one's part (and its liars)."""
    many = sources_text(outcome.get("sources"))
    return many or outcome.get("peer_name") or outcome["peer_id"][:7]


EMPTY = {
    "peers": "no other members online",
    "ls": "the peer shares no files",
    "shared": "this daemon shares no files",
    "downloads": "no transfer in progress",
    "history": "no transfer yet",
}


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
        count = result["shared_files"]
        files = "1 file" if count == 1 else f"{count} files"
        print(f"{files} shared (generation {result['generation']}, the listing's ETag)")
    elif command == "cancel":
        print(f"cancelled transfer {printable(str(result['id']))}")
    elif command == "fetch":
        for outcome in outcomes:
            if "status" not in outcome:
                print(f"transfer {outcome['id']} started: `p2pctl downloads` shows it")
            elif outcome["status"] == "ok":
                size = human_size(outcome["size"])
                path = printable(outcome["path"])
                if outcome.get("already_there"):
                    print(f"{path}  {size}  already there with sha256 {outcome['sha256']}")
                else:
                    print(f"{path}  {size}  sha256 {outcome['sha256']} verified")
                if many := sources_text(outcome.get("sources")):
                    print(f"  from {printable(many)}")
    elif command == "downloads":
        print(show_downloads(result))
    elif command == "history":
        print(show_history(result))
    else:
        print_json(result)


def print_json(value: Any) -> None:
    """``--json`` output: one indented document."""
    print(dumps_indented(value))
