"""The one rule for a shared file's path, used to list, to serve and to download.

A path that is listed can be served and can be fetched; one that breaks the
rule is neither listed (the scan skips it, with a warning) nor served (400)
nor accepted from a member's listing (the listing is refused).  Beside it,
the form of the name its content goes by: a sha256, lowercase hex.  Pure.
"""

from __future__ import annotations

#: Bytes of a whole relative path, and of one of its segments (Linux's limits).
MAX_PATH_BYTES = 4096
MAX_SEGMENT_BYTES = 255
#: A listed file's content: its sha256, in lowercase hex (docs/protocol.md §4.2).
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class UnsafePath(ValueError):
    """A path that may not be shared, served or used to name a file on disk."""


def check_relpath(path: str) -> str:
    """``path`` if it is a safe shared path, else UnsafePath saying why.

    Safe: relative, ``/``-separated, no empty, ``.``, ``..`` or hidden
    (``.name``) segment, valid UTF-8 (no lone surrogates), no control
    characters and no backslash (names that a terminal, JSON and every peer
    can carry unchanged), within Linux's name and path lengths.
    """
    if not path:
        raise UnsafePath("the path is empty")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafePath("the path is not valid UTF-8") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise UnsafePath(f"the path is longer than {MAX_PATH_BYTES} bytes")
    if path.startswith("/"):
        raise UnsafePath("the path is absolute")
    if "\\" in path:
        raise UnsafePath("the path has a backslash")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in path):
        raise UnsafePath("the path has control characters")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise UnsafePath("the path has an empty, '.' or '..' segment")
        if segment.startswith("."):
            raise UnsafePath("the path has a hidden ('.name') segment")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise UnsafePath(f"a name in the path is longer than {MAX_SEGMENT_BYTES} bytes")
    return path


def is_safe_relpath(path: str) -> bool:
    try:
        check_relpath(path)
    except UnsafePath:
        return False
    return True
