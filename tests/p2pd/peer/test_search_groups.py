"""Search answers of many members shown one row per content, the most shared first."""

from __future__ import annotations

from dataclasses import dataclass

from p2pd.peer.search_groups import MAX_NAMES, Content, Holder, group

A = "a" * 64
B = "b" * 64
C = "c" * 64


@dataclass(frozen=True)
class Found:
    path: str
    size: int
    sha256: str


ALICE = ("alice-id", "alice")
BOB = ("bob-id", "bob")
CAROL = ("carol-id", "carol")


def test_one_row_per_content_most_members_first_then_by_name() -> None:
    grouped = group(
        [
            (*ALICE, Found("zeta.txt", 1, A)),
            (*ALICE, Found("iso/debian.iso", 9, B)),
            (*BOB, Found("downloads/debian.iso", 9, B)),
            (*CAROL, Found("alpha.txt", 2, C)),
        ]
    )
    assert [(row.names[0], row.count) for row in grouped.contents] == [
        ("debian.iso", 2),
        ("alpha.txt", 1),
        ("zeta.txt", 1),
    ]
    assert grouped.left_out == 0
    assert grouped.contents[0] == Content(
        sha256=B,
        size=9,
        names=("debian.iso",),
        members=(
            Holder("alice-id", "alice", "iso/debian.iso"),
            Holder("bob-id", "bob", "downloads/debian.iso"),
        ),
    )


def test_names_most_common_first_counted_once_per_member() -> None:
    grouped = group(
        [
            (*ALICE, Found("a/setup.exe", 5, A)),
            (*ALICE, Found("b/setup.exe", 5, A)),
            (*ALICE, Found("c/setup (1).exe", 5, A)),
            (*BOB, Found("tool.exe", 5, A)),
            (*CAROL, Found("x/tool.exe", 5, A)),
        ]
    )
    (row,) = grouped.contents
    assert row.names == ("tool.exe", "setup (1).exe", "setup.exe")
    assert row.count == 3
    assert row.members[0] == Holder("alice-id", "alice", "a/setup.exe")  # first path, sorted


def test_members_are_listed_by_name_then_id() -> None:
    grouped = group(
        [
            ("id-2", "zed", Found("f", 1, A)),
            ("id-9", "amy", Found("f", 1, A)),
            ("id-1", "amy", Found("f", 1, A)),
        ]
    )
    assert [(h.name, h.id) for h in grouped.contents[0].members] == [
        ("amy", "id-1"),
        ("amy", "id-9"),
        ("zed", "id-2"),
    ]


def test_a_different_size_for_the_same_hash_is_another_row() -> None:
    grouped = group(
        [
            (*ALICE, Found("film.mkv", 700, A)),
            (*BOB, Found("film.mkv", 700, A)),
            (*CAROL, Found("film.mkv", 1, A)),  # a liar, or a mistake
        ]
    )
    assert [(row.size, row.count) for row in grouped.contents] == [(700, 2), (1, 1)]


def test_rows_and_names_are_bounded_and_the_rest_counted() -> None:
    results = [(*ALICE, Found(f"f{n:05d}", 1, f"{n:064x}")) for n in range(1500)]
    results += [(*BOB, Found("f00042", 1, f"{42:064x}"))]
    grouped = group(results, max_contents=1000)
    assert len(grouped.contents) == 1000
    assert grouped.left_out == 500
    assert grouped.contents[0].names == ("f00042",)
    assert grouped.contents[1].names == ("f00000",)
    many_names = [(f"id{n}", f"m{n}", Found(f"name{n:02d}", 1, A)) for n in range(30)]
    (row,) = group(many_names).contents
    assert len(row.names) == MAX_NAMES and row.count == 30


def test_rows_as_json_for_the_cli() -> None:
    (row,) = group([(*ALICE, Found("docs/a.pdf", 3, A))]).contents
    assert row.to_json() == {
        "sha256": A,
        "size": 3,
        "names": ["a.pdf"],
        "members": [{"id": "alice-id", "name": "alice", "path": "docs/a.pdf"}],
        "count": 1,
    }
    assert group([]).contents == []
