"""Search answers from many members, grouped by content for the CLI. Pure.

One row per content (sha256 and size): the names members give it, most
common first, and the members that hold it, each with the path to fetch it
by.  Rows with more members come first, then by name: what most members
share is what a user most likely looks for.

A name is the last segment of a path: members keep the same bytes in
different folders, and the name is what ``fetch --sha256`` gives the
download when the user names none.  A name counts once per member.  A member
that lists the content under several paths appears once, with the first path
in sorted order.  A member that announces another size for a sha256 gets a
row of its own: equal hashes of different sizes cannot be the same content,
and one member's mistake does not hide the others' answers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

#: Rows kept; the rest are counted in ``Grouped.left_out``.
MAX_CONTENTS = 1000
#: Names kept per row, most common first.
MAX_NAMES = 10


class Found(Protocol):
    """What grouping reads of one match in a member's answer."""

    @property
    def path(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Holder:
    """A member holding a content, and where in its share."""

    id: str
    name: str
    path: str

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "path": self.path}


@dataclass(frozen=True, slots=True)
class Content:
    sha256: str
    size: int
    #: Most common first (ties by name), at most MAX_NAMES.
    names: tuple[str, ...]
    #: Sorted by member name, then id; one per member.
    members: tuple[Holder, ...]

    @property
    def count(self) -> int:
        """How many members hold it."""
        return len(self.members)

    def to_json(self) -> dict[str, object]:
        return {
            "sha256": self.sha256,
            "size": self.size,
            "names": list(self.names),
            "members": [holder.to_json() for holder in self.members],
            "count": self.count,
        }


@dataclass(frozen=True, slots=True)
class Grouped:
    contents: list[Content] = field(default_factory=list)
    #: Contents found but not kept (beyond ``max_contents``).
    left_out: int = 0


def group(results: Iterable[tuple[str, str, Found]], max_contents: int = MAX_CONTENTS) -> Grouped:
    """Rows per content from (member id, member name, match) triples of many members."""
    #: (sha256, size) -> member id -> (member name, paths)
    held: dict[tuple[str, int], dict[str, tuple[str, list[str]]]] = {}
    for member_id, member_name, found in results:
        by_member = held.setdefault((found.sha256, found.size), {})
        by_member.setdefault(member_id, (member_name, []))[1].append(found.path)
    rows = [_row(sha256, size, by_member) for (sha256, size), by_member in held.items()]
    rows.sort(key=lambda row: (-row.count, row.names[0], row.sha256, row.size))
    return Grouped(rows[:max_contents], max(0, len(rows) - max_contents))


def _row(sha256: str, size: int, by_member: dict[str, tuple[str, list[str]]]) -> Content:
    names: Counter[str] = Counter()
    holders = []
    for member_id, (member_name, paths) in by_member.items():
        names.update({path.rsplit("/", 1)[-1] for path in paths})
        holders.append(Holder(member_id, member_name, min(paths)))
    holders.sort(key=lambda holder: (holder.name, holder.id))
    ranked = sorted(names.items(), key=lambda item: (-item[1], item[0]))
    return Content(sha256, size, tuple(name for name, _ in ranked[:MAX_NAMES]), tuple(holders))
