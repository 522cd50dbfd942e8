"""A fetch's rules and words that need no I/O: which destinations the path rule
refuses, why a fetch too large for the queue is refused and how to split it,
where a refused fetch would have gone, and the progress of several transfers
as one (for ``fetch`` of a folder)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from p2pcommon.models import SharedFile
from p2pcommon.paths import UnsafePath
from p2pd.fetch.downloads import MAX_TRANSFERS, Transfer
from p2pd.fetch.names import destination


def unsafe(download_dir: Path, entries: list[SharedFile]) -> list[str]:
    """Why each entry's destination is refused (the path rule), for those refused."""
    refused: list[str] = []
    for entry in entries:
        try:
            destination(download_dir, entry.path)
        except UnsafePath as exc:
            refused.append(str(exc))
    return refused


def too_many(path: str, wanted: str, entries: list[SharedFile], new: int, queued: int) -> str:
    """Why a fetch of ``new`` more transfers is refused, and how to make it fit."""
    if new > MAX_TRANSFERS:
        # Too big in itself: the parts it could be fetched in, largest first.
        counts = Counter(
            wanted + rest.split("/", 1)[0] + "/"
            for entry in entries
            if "/" in (rest := entry.path[len(wanted) :])
        )
        loose = len(entries) - sum(counts.values())
        parts = [f"{folder} ({count} files)" for folder, count in _largest(counts, 5)]
        if len(counts) > 5:
            parts.append(f"… {len(counts) - 5} more folders")
        if loose:
            parts.append(f"its {loose} files by name")
        return (
            f"{path!r} holds {len(entries)} files: more than p2pd queues at once "
            f"({MAX_TRANSFERS} transfers); nothing was fetched. Fetch it a part at a time"
            + (f": {', '.join(parts)}" if parts else "")
        )
    what = f"{path!r} ({new} files)" if wanted.endswith("/") else repr(path)
    return (
        f"no room for {what}: {queued} transfers are queued or running, and p2pd takes "
        f"{MAX_TRANSFERS} at most; wait for some to finish (`p2pctl downloads`), or cancel "
        "some, then fetch again"
    )


def _largest(counts: Counter[str], n: int) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]


def intended(download_dir: Path, wanted: str) -> Path:
    """Where ``wanted`` would have gone; ``download_dir`` when that is not known."""
    try:
        return destination(download_dir, wanted.rstrip("/"))
    except UnsafePath:
        return download_dir


def combined_progress(transfers: list[Transfer]) -> dict[str, Any]:
    if len(transfers) == 1:
        return transfers[0].to_json()
    return {
        "id": ",".join(t.queued.id for t in transfers),
        "size": sum(t.queued.size for t in transfers),
        "bytes_done": sum(t.progress.bytes_done for t in transfers),
        "rate": sum(t.progress.rate for t in transfers),
        "files": len(transfers),
        "files_done": sum(t.done.is_set() for t in transfers),
    }
