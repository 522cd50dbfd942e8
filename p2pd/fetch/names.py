"""Where a download's bytes go: its destination, its partial file, a free name.  Pure.

A member's path becomes ``download_dir/<path>`` only if it passes the one
path rule (p2pcommon.paths); the partial file is named by the content, and a
name that is taken gives way to ``name (N).ext``.  Nothing here touches the
disk: ``p2pd.fetch.partial`` and ``p2pd.fetch.downloaddir`` do, with these names.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath

from p2pcommon.paths import UnsafePath, is_safe_relpath

PARTIAL_SUFFIX = ".p2pd-partial"
#: Beside a partial file filled piece by piece: the piece layer its pieces are checked against.
LAYER_SUFFIX = ".p2pd-layer"
#: The longest file name, in bytes, that Linux file systems take (ext4, xfs, btrfs, tmpfs).
NAME_MAX = 255


def partial_name(sha256: str) -> str:
    """Hidden, named by content: a resume may come from any member listing the same bytes."""
    return f".{sha256}{PARTIAL_SUFFIX}"


def layer_name(sha256: str) -> str:
    return f".{sha256}{LAYER_SUFFIX}"


def partial_path(download_dir: Path, sha256: str) -> Path:
    return download_dir / partial_name(sha256)


def destination(download_dir: Path, remote_path: str) -> Path:
    """``download_dir/<remote path>``; UnsafePath for a path that could leave the folder."""
    if not is_safe_relpath(remote_path):
        raise UnsafePath(f"{remote_path!r} is not a plain relative path")
    return download_dir.joinpath(*PurePosixPath(remote_path).parts)


def _byte_length(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def _cut(text: str, budget: int) -> str:
    """The longest start of ``text`` of at most ``budget`` UTF-8 bytes, whole characters only."""
    used = 0
    for index, char in enumerate(text):
        used += _byte_length(char)
        if used > budget:
            return text[:index]
    return text


def numbered(path: Path, number: int) -> Path:
    """``name (N).ext`` beside ``path``.

    A name may have at most NAME_MAX bytes: where ``name (N).ext`` would be
    longer, the stem is shortened (whole characters, the suffix kept), so that
    a long name that is taken still gets a free one instead of ENAMETOOLONG.
    """
    if number == 0:
        return path
    suffix = "".join(path.suffixes[-1:])
    tail = f" ({number}){suffix}"
    if _byte_length(tail) >= NAME_MAX:  # no room for any stem: the suffix goes too
        suffix, tail = "", f" ({number})"
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(_cut(stem, NAME_MAX - _byte_length(tail)) + tail)


def free_name(path: Path, taken: Callable[[Path], bool]) -> Path:
    number = 0
    while taken(numbered(path, number)):
        number += 1
    return numbered(path, number)
