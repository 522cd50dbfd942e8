"""The peer protocol's rules for files over HTTP (docs/protocol.md §4.3), pure.

Targets (``/files/<percent-encoded path>``), byte ranges, entity tags and
``Repr-Digest``: parsed and checked before any lookup or disk access.
"""

from __future__ import annotations

import base64
import hashlib
import re
from urllib.parse import unquote

from p2pcommon.paths import UnsafePath, check_relpath, is_safe_relpath

FILES_PREFIX = "/files/"
#: ``GET /layers/<path>``: a file's piece layer (docs/protocol.md §4.6).
LAYERS_PREFIX = "/layers/"
MAX_TARGET = 4096

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
#: An entity-tag (RFC 9110 §8.8.3), its opaque-tag grouped, and a list of them.
_ENTITY_TAG = re.compile(r'(?:W/)?("[\x21\x23-\x7e\x80-\xff]*")')
_TAG_LIST = re.compile(rf"[ \t,]*(?:{_ENTITY_TAG.pattern}[ \t]*(?:,[ \t,]*|\Z))*")


class BadTarget(ValueError):
    pass


class NotShared(Exception):
    """A well-formed target that the path rule never shares (a hidden name): 404."""


def _only_hidden(path: str) -> bool:
    """Whether the path rule refuses ``path`` for hidden ('.name') segments and nothing else."""
    unhidden = "/".join(
        "_" + part[1:] if part.startswith(".") and part not in (".", "..") else part
        for part in path.split("/")
    )
    return unhidden != path and is_safe_relpath(unhidden)


def decode_file_target(target: str, prefix: str = FILES_PREFIX) -> str:
    """The relative path named by ``/files/<path>`` (or another ``prefix``); BadTarget for
    any unsafe spelling.

    The decoded path must pass the one path rule (p2pcommon.paths); a path
    that breaks it only by a hidden name raises NotShared (never listed, so
    404 like any other file that is not in the index).
    """
    raw = target.split("?", 1)[0]
    if len(raw) > MAX_TARGET:
        raise BadTarget("the target is too long")
    encoded = raw[len(prefix) :]
    if "%" in encoded and re.search(r"%(?![0-9A-Fa-f]{2})", encoded):
        raise BadTarget("bad percent-encoding")
    try:
        path = unquote(encoded, errors="strict")
    except UnicodeDecodeError:
        raise BadTarget("the path is not UTF-8") from None
    try:
        return check_relpath(path)
    except UnsafePath as exc:
        if _only_hidden(path):
            raise NotShared(str(exc)) from None
        raise BadTarget(str(exc)) from None


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive for a single byte range; None to serve everything.

    Raises ValueError when the range cannot be satisfied (416).
    """
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None  # multiple or other-unit ranges: a server may ignore Range
    first_text, last_text = match.groups()
    if not first_text and not last_text:
        return None
    if not first_text:
        suffix = int(last_text)
        if suffix == 0:
            raise ValueError("empty suffix range")
        return max(0, size - suffix), size - 1
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if first >= size or last < first:
        raise ValueError("range outside the file")
    return first, min(last, size - 1)


def none_match(header: bytes | None, etag: str) -> bool:
    """Whether ``If-None-Match`` matches ``etag``: weak comparison (RFC 9110 §13.1.2).

    The value is a list (empty elements allowed, §5.6.1) of tags, weak or
    not, or ``*``.  A malformed one is ignored: the whole answer is never wrong.
    """
    if header is None:
        return False
    value = header.decode("latin-1").strip()
    if value == "*":
        return True  # the resource exists, or this would not be asked
    return _TAG_LIST.fullmatch(value) is not None and etag in _ENTITY_TAG.findall(value)


def if_range_holds(header: bytes, etag: str) -> bool:
    """Whether ``If-Range`` lets ``Range`` apply (RFC 9110 §13.1.5).

    Only a strong tag equal to the current one holds: a weak tag never does,
    and an HTTP-date cannot, since no Last-Modified is sent (an mtime is too
    coarse to promise the same bytes).
    """
    value = header.decode("latin-1").strip()
    return _ENTITY_TAG.fullmatch(value) is not None and value == etag


def file_etag(sha256_hex: str) -> str:
    """A strong ETag: the content's hash, so equal bytes get equal tags, on any start."""
    return f'"sha256-{sha256_hex}"'


def digest_of(body: bytes) -> str:
    """``Repr-Digest`` of a body sent whole (a piece layer)."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"


def repr_digest(sha256_hex: str) -> str:
    return f"sha-256=:{base64.b64encode(bytes.fromhex(sha256_hex)).decode()}:"
