"""Searching one member's share index: the query a member is asked, and what matches it. Pure.

The route (peer protocol, mutual TLS, members only)::

    GET /search?q=<text>&sha256=<hex prefix>&min_size=<n>&max_size=<n>&limit=<n>

Every parameter is optional, but at least one of ``q``, ``sha256``,
``min_size`` and ``max_size`` must be given.  A file matches when it meets
every criterion given:

``q``
    At most 256 characters (after decoding).  If it contains ``*``, ``?`` or
    ``[`` it is **one glob pattern** matched against the whole relative path
    with Python's ``fnmatch`` rules: ``*`` is any run of characters *including*
    ``/``, ``?`` one character, ``[seq]`` / ``[!seq]`` a character class;
    spaces in it are literal (``Pink Floyd/*.flac``).  Otherwise it is split
    on whitespace into at most 8 **terms**: a term matches when it occurs in
    the path as a substring; a term written ``-word`` excludes the paths in
    which ``word`` occurs; every term must hold.  A lone ``-`` is refused.
    Both are case-insensitive: path and query are compared after
    ``str.lower()``, without Unicode normalization.  Control characters are
    refused (no shared path has any).
``sha256``
    8 to 64 lowercase hex digits: the content's sha256 starts with them.
``min_size``, ``max_size``
    Decimal digits (0 to 2**63 - 1), bounds on the size in bytes, inclusive;
    ``min_size`` may not exceed ``max_size``.
``limit``
    1 to 100 (the default): how many matches the asker wants at most.

Encoding is ``application/x-www-form-urlencoded``: ``+`` is a space and
``%XX`` escapes UTF-8 bytes (a literal ``+`` is ``%2B``).  A target longer
than 4096 bytes, a path other than ``/search``, a fragment, a bad escape,
bytes that are not UTF-8, a parameter without ``=``, an unknown parameter or
a repeated one are refused with a ``QueryError`` naming the field (400):
nothing is guessed, so a newer client's criterion is never silently dropped.
Empty ``&&`` pieces are skipped.

The answer lists at most ``limit`` matches in the index's (path) order and
says whether there were more.  A member answers each asking member at most
5 searches a second, in bursts of 10 (``SearchLimiter``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Protocol, TypeVar
from urllib.parse import quote, unquote_to_bytes

from p2pd.peer.buckets import KeyedBuckets

SEARCH_PATH = "/search"
MAX_TARGET = 4096
MAX_QUERY_CHARS = 256
MAX_TERMS = 8
MAX_MATCHES = 100
MIN_SHA256_PREFIX = 8
MAX_SIZE = 2**63 - 1

PARAMETERS = ("q", "sha256", "min_size", "max_size", "limit")
_GLOB_CHARS = frozenset("*?[")
_HEX_PREFIX = re.compile(rf"[0-9a-f]{{{MIN_SHA256_PREFIX},64}}")
_DIGITS = re.compile(r"[0-9]{1,19}")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class QueryError(ValueError):
    """A search query that cannot be run; ``field`` names the parameter at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class Entry(Protocol):
    """What a search reads of a share index entry (p2pd's FileEntry has it)."""

    @property
    def path(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def mtime(self) -> float: ...
    @property
    def sha256(self) -> str: ...


E = TypeVar("E", bound=Entry)


@dataclass(frozen=True, slots=True)
class Query:
    """A checked search; build it with ``build_query`` or ``parse_target``."""

    #: ``q`` as given (for ``target()``), or None.
    text: str | None = None
    #: Lowercased substrings that must all occur in the path.
    terms: tuple[str, ...] = ()
    #: Lowercased substrings none of which may occur.
    excluded: tuple[str, ...] = ()
    #: The lowercased glob for the whole path, or None.
    glob: str | None = None
    sha256_prefix: str | None = None
    min_size: int | None = None
    max_size: int | None = None
    limit: int = MAX_MATCHES

    def target(self) -> str:
        """The request target that asks a member this query (``parse_target`` reads it)."""
        given = [
            ("q", self.text),
            ("sha256", self.sha256_prefix),
            ("min_size", None if self.min_size is None else str(self.min_size)),
            ("max_size", None if self.max_size is None else str(self.max_size)),
            ("limit", None if self.limit == MAX_MATCHES else str(self.limit)),
        ]
        pairs = [f"{name}={quote(value, safe='')}" for name, value in given if value is not None]
        return f"{SEARCH_PATH}?{'&'.join(pairs)}"


def build_query(
    q: str | None = None,
    sha256: str | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
    limit: int = MAX_MATCHES,
) -> Query:
    """The checked Query for these criteria; QueryError naming the first one at fault."""
    if q is None and sha256 is None and min_size is None and max_size is None:
        raise QueryError("q", "no criterion: give q, sha256, min_size or max_size")
    terms: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    glob = None
    if q is not None:
        terms, excluded, glob = _read_text(q)
    if sha256 is not None and _HEX_PREFIX.fullmatch(sha256) is None:
        raise QueryError("sha256", "give 8 to 64 lowercase hex digits of the content's sha256")
    for name, size in (("min_size", min_size), ("max_size", max_size)):
        if size is not None and not 0 <= size <= MAX_SIZE:
            raise QueryError(name, f"give a size in bytes from 0 to {MAX_SIZE}")
    if min_size is not None and max_size is not None and min_size > max_size:
        raise QueryError("max_size", f"{max_size} is below min_size {min_size}: swap them")
    if not 1 <= limit <= MAX_MATCHES:
        raise QueryError("limit", f"give a number of matches from 1 to {MAX_MATCHES}")
    return Query(q, terms, excluded, glob, sha256, min_size, max_size, limit)


def _read_text(q: str) -> tuple[tuple[str, ...], tuple[str, ...], str | None]:
    if len(q) > MAX_QUERY_CHARS:
        raise QueryError("q", f"{len(q)} characters; shorten it to {MAX_QUERY_CHARS} at most")
    if not q.isascii():
        try:
            q.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate, as from undecodable command-line bytes
            raise QueryError("q", "is not valid text (UTF-8): retype it") from None
    if _CONTROL.search(q):
        raise QueryError("q", "has control characters, which no shared path has: remove them")
    if not q.strip():
        raise QueryError("q", "is empty: give at least one term or a glob")
    if not _GLOB_CHARS.isdisjoint(q):
        return (), (), q.lower()
    words = q.lower().split()
    if len(words) > MAX_TERMS:
        raise QueryError("q", f"{len(words)} terms; give {MAX_TERMS} at most")
    if "-" in words:
        raise QueryError("q", "a lone '-' excludes nothing: write -word")
    terms = tuple(word for word in words if not word.startswith("-"))
    excluded = tuple(word[1:] for word in words if word.startswith("-"))
    return terms, excluded, None


def parse_target(target: bytes | str) -> Query:
    """The Query asked by a request target ``/search?...``; QueryError for anything else."""
    if isinstance(target, bytes):
        target = target.decode("latin-1")
    if not target.isascii():
        raise QueryError("target", "has non-ASCII characters: percent-encode them as UTF-8")
    if len(target) > MAX_TARGET:
        raise QueryError("target", f"longer than {MAX_TARGET} bytes: shorten the query")
    if "#" in target:
        raise QueryError("target", "has a fragment ('#'): percent-encode it as %23")
    path, _, query_string = target.partition("?")
    if path != SEARCH_PATH:
        raise QueryError("target", f"the path is not {SEARCH_PATH}")
    given: dict[str, str] = {}
    for piece in query_string.split("&"):
        if not piece:
            continue
        raw_name, equals, raw_value = piece.partition("=")
        name = _decode("target", raw_name)
        if name not in PARAMETERS:
            raise QueryError(
                "target", f"unknown parameter {name[:32]!r}; known: {', '.join(PARAMETERS)}"
            )
        if not equals:
            raise QueryError(name, "has no value: write name=value")
        if name in given:
            raise QueryError(name, "given more than once: give it once")
        given[name] = _decode(name, raw_value)
    limit = _number(given, "limit")
    return build_query(
        q=given.get("q"),
        sha256=given.get("sha256"),
        min_size=_number(given, "min_size"),
        max_size=_number(given, "max_size"),
        limit=MAX_MATCHES if limit is None else limit,
    )


def _decode(field: str, raw: str) -> str:
    if _BAD_ESCAPE.search(raw):
        raise QueryError(field, "has a '%' not followed by two hex digits: write %25 for '%'")
    try:
        return unquote_to_bytes(raw.replace("+", " ")).decode("utf-8")
    except UnicodeDecodeError:
        raise QueryError(field, "is not UTF-8 once percent-decoded") from None


def _number(given: dict[str, str], name: str) -> int | None:
    text = given.get(name)
    if text is None:
        return None
    if _DIGITS.fullmatch(text) is None:
        raise QueryError(name, f"{text[:20]!r} is not a whole number of at most 19 digits")
    return int(text)


def lowered_paths(entries: Iterable[Entry]) -> list[str]:
    """The paths as searches compare them: compute once per listing, pass to ``match``."""
    return [entry.path.lower() for entry in entries]


def match(
    entries: Sequence[E],
    query: Query,
    limit: int = MAX_MATCHES,
    *,
    lowered: Sequence[str] | None = None,
) -> tuple[list[E], bool]:
    """The first ``min(limit, query.limit)`` entries that match, and whether more do.

    ``lowered`` is ``lowered_paths(entries)``, when the caller keeps it with its
    listing.  Cost: one pass of cheap filters, most selective first, each
    seeing only what the previous ones kept; the pass stops once one match
    more than asked has been found.
    """
    if lowered is None:
        lowered = lowered_paths(entries)
    elif len(lowered) != len(entries):
        raise ValueError("lowered paths do not belong to these entries (lengths differ)")
    cap = min(limit, query.limit)
    candidates: Iterator[int] = iter(range(len(entries)))
    if query.sha256_prefix is not None:
        prefix = query.sha256_prefix
        candidates = (i for i in candidates if entries[i].sha256.startswith(prefix))
    for term in sorted(query.terms, key=len, reverse=True):  # the longest rules out most
        candidates = _with(candidates, lowered, term)
    for term in query.excluded:
        candidates = _without(candidates, lowered, term)
    if query.glob is not None:
        candidates = _glob_filter(candidates, lowered, query.glob)
    if query.min_size is not None or query.max_size is not None:
        low, high = query.min_size or 0, MAX_SIZE if query.max_size is None else query.max_size
        candidates = (i for i in candidates if low <= entries[i].size <= high)
    found = list(islice(candidates, cap + 1))
    return [entries[i] for i in found[:cap]], len(found) > cap


def _with(candidates: Iterator[int], lowered: Sequence[str], term: str) -> Iterator[int]:
    return (i for i in candidates if term in lowered[i])


def _without(candidates: Iterator[int], lowered: Sequence[str], term: str) -> Iterator[int]:
    return (i for i in candidates if term not in lowered[i])


def _glob_filter(candidates: Iterator[int], lowered: Sequence[str], glob: str) -> Iterator[int]:
    # A regex per path costs ~10 times a substring test: the pattern's longest
    # literal run, which every match contains, rules most paths out first.
    # Inside a class ('[...]') a '*' is literal, so only class-free patterns are split.
    if "[" not in glob:
        literal = max(re.split(r"[*?]+", glob), key=len)
        if literal:
            candidates = _with(candidates, lowered, literal)
    whole = re.compile(fnmatch.translate(glob)).match
    return (i for i in candidates if whole(lowered[i]) is not None)


class SearchLimiter(KeyedBuckets):
    """Token buckets per asking member (``p2pd.peer.buckets``): by default 5 searches a
    second, bursts of 10, for the 4096 members that searched last."""

    def __init__(self, rate: float = 5.0, burst: int = 10, max_members: int = 4096) -> None:
        super().__init__(rate, burst, max_members)
