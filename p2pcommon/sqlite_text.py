"""Reading TEXT back from our own SQLite files, one damaged value at a time."""

from __future__ import annotations


def text_or_bytes(raw: bytes) -> str | bytes:
    """A TEXT value as str, or as the bytes it is when they are not UTF-8.

    sqlite3's default fails the whole query on one such value (a damaged
    file, another program's write); this way the reader's check refuses
    that one row, and every other row is still read.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw
