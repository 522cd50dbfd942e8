"""A member's listing as kept in memory: its entries as compact JSON, found by search.

A listing is validated once, entry by entry, as the peer protocol says
(p2pcommon.models.Listing), then kept in one canonical form: the entries as
compact, ASCII-escaped JSON objects ``{"path":…,"size":…,"mtime":…,"sha256":…}``
(with ``"root"`` and ``"piece_size"`` after them where the member listed them)
in one bytes object, with the offset of each.  That costs about the size of
the body received (~120 bytes an entry) where half a million pydantic objects
cost ~400 MiB; lookups are substring searches in C (an entry's ``{"path":``
and ``"sha256":`` can only appear at the places this module writes them:
inside a JSON string every ``"`` is escaped), and ``ls`` sends the bytes as
they are.

Validating a large body holds the interpreter's lock for seconds (pydantic's
parser is one call): even in a worker thread it would stall the event loop
(the control socket, the watchdog).  Bodies over ``IN_THREAD_MAX`` are
therefore checked by a short child process, ``python -m p2pd.peer.listing``
(p2pd.peer.listing_child), which answers the kept form (``child_output``) or the
first problem.
"""

from __future__ import annotations

import bisect
import json
import re
import sys
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pydantic import ValidationError

from p2pcommon.models import Listing, SharedFile, validation_reason

#: Bodies up to this size are checked in a worker thread (~40 ms of pydantic);
#: larger ones by a child process (p2pd.peer.client).
IN_THREAD_MAX = 1024 * 1024
#: The child's exit status when the listing is invalid (its reason on stderr).
INVALID_STATUS = 3
_SEPARATORS = (",", ":")
_ENTRY_START = re.compile(rb'\{"path":')


@dataclass(frozen=True, eq=False)
class MemberListing:
    """One member's listing, compact.  ``data`` is the JSON array of its entries."""

    generation: int
    data: bytes | bytearray
    #: Where each entry starts in ``data``, and one more: ``len(data)``.
    offsets: array[int]

    @classmethod
    def of(cls, generation: int, files: Iterable[SharedFile]) -> MemberListing:
        """The canonical form of entries (validated already, or a test's own)."""
        entries = [entry.to_json() for entry in files]
        data = json.dumps(entries, separators=_SEPARATORS).encode("ascii")
        # '{"path":' starts each entry, and only there (see the module's doc).
        offsets = array("Q", (match.start() for match in _ENTRY_START.finditer(data)))
        offsets.append(len(data))
        return cls(generation, data, offsets)

    @classmethod
    def validated(cls, body: bytes) -> MemberListing:
        """Check a ``GET /files`` body; ValidationError as pydantic says it (blocking)."""
        parsed = Listing.model_validate_json(body)
        return cls.of(parsed.generation, parsed.files)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def nbytes(self) -> int:
        """Memory held, for the cache's budget."""
        return len(self.data) + self.offsets.itemsize * len(self.offsets)

    def entry(self, index: int) -> SharedFile:
        start, end = self.offsets[index], self.offsets[index + 1] - 1
        return SharedFile.model_construct(**json.loads(self.data[start:end]))

    def __iter__(self) -> Iterator[SharedFile]:
        """Every entry, decoded one by one (a full pass costs µs per entry)."""
        return (self.entry(index) for index in range(len(self)))

    @property
    def files(self) -> list[SharedFile]:
        """All entries decoded: for small listings and tests; lookups use the searches."""
        return list(self)

    def _at(self, position: int) -> int:
        """The index of the entry that holds ``data[position]``."""
        return bisect.bisect_right(self.offsets, position) - 1

    def _found(self, needle: bytes) -> Iterator[int]:
        """Indexes of the entries in which ``needle`` occurs, in order, each once."""
        position, last = self.data.find(needle), -1
        while position >= 0:
            index = self._at(position)
            if index != last:
                yield index
                last = index
            position = self.data.find(needle, self.offsets[index + 1])

    def with_path(self, path: str) -> list[SharedFile]:
        """The entries listed under exactly ``path`` (one, unless the member repeats it)."""
        needle = b'{"path":' + _json_string(path) + b","
        return [self.entry(index) for index in self._found(needle)]

    def under(self, prefix: str) -> list[SharedFile]:
        """The entries whose path starts with ``prefix`` (JSON escapes keep prefixes)."""
        needle = b'{"path":' + _json_string(prefix)[:-1]
        return [self.entry(index) for index in self._found(needle)]

    def has_under(self, prefix: str) -> bool:
        needle = b'{"path":' + _json_string(prefix)[:-1]
        return self.data.find(needle) >= 0

    def path_of(self, sha256: str, size: int) -> str | None:
        """The path of an entry with these bytes, if there is one."""
        entry = self.entry_of(sha256, size)
        return entry.path if entry is not None else None

    def entry_of(self, sha256: str, size: int) -> SharedFile | None:
        """An entry with these bytes, if there is one (with its root, if listed)."""
        # '"sha256":' unescaped can only be that key: inside a string every '"' is escaped.
        needle = b'"sha256":' + _json_string(sha256)
        for index in self._found(needle):
            entry = self.entry(index)
            if entry.size == size and entry.sha256 == sha256:
                return entry
        return None


def _json_string(text: str) -> bytes:
    return json.dumps(text).encode("ascii")


# -- the checking child: body on stdin, the kept form (or the problem) out ------------


def child_output(listing: MemberListing) -> list[bytes | bytearray]:
    """``GENERATION COUNT\\n``, the offsets (little-endian u64), then the data."""
    offsets = array("Q", listing.offsets)
    if sys.byteorder != "little":
        offsets.byteswap()
    header = f"{listing.generation} {len(listing)}\n".encode("ascii")
    return [header, offsets.tobytes(), listing.data]


def main() -> int:
    body = sys.stdin.buffer.read()
    try:
        listing = MemberListing.validated(body)
    except ValidationError as exc:
        sys.stderr.write(validation_reason(exc) + "\n")
        return INVALID_STATUS
    sys.stdout.buffer.writelines(child_output(listing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
