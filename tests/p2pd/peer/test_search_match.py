"""What a member's index answers to a search, and how often a member may ask."""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pd.peer.search import (
    MAX_MATCHES,
    Query,
    SearchLimiter,
    build_query,
    lowered_paths,
    match,
)


@dataclass(frozen=True)
class Item:
    """A share index entry as the search sees it (the shape of p2pd's FileEntry)."""

    path: str
    size: int = 100
    mtime: float = 0.0
    sha256: str = ""


def item(path: str, size: int = 100) -> Item:
    return Item(path, size, 0.0, hashlib.sha256(path.encode()).hexdigest())


SHARE = [
    item("Music/ABBA/Waterloo.mp3", 4_000_000),
    item("Music/ABBA/cover.jpg", 80_000),
    item("Music/Pink Floyd/Time.flac", 40_000_000),
    item("books/Linux Kernel Development.pdf", 9_000_000),
    item("iso/debian-12-amd64-netinst.iso", 650_000_000),
    item("iso/debian-12-amd64-DVD-1.iso", 3_900_000_000),
    item("notes.txt", 0),
]
SHARE.sort(key=lambda entry: entry.path)


def paths(q: str | None = None, **criteria: int | str) -> list[str]:
    found, more = match(SHARE, build_query(q=q, **criteria))  # type: ignore[arg-type]
    assert not more
    return [entry.path for entry in found]


def test_every_term_must_occur_in_the_path() -> None:
    assert paths("debian iso") == [
        "iso/debian-12-amd64-DVD-1.iso",
        "iso/debian-12-amd64-netinst.iso",
    ]
    assert paths("debian dvd") == ["iso/debian-12-amd64-DVD-1.iso"]
    assert paths("debian flac") == []


def test_terms_match_across_folders_and_ignore_case() -> None:
    assert paths("MUSIC/abba/w") == ["Music/ABBA/Waterloo.mp3"]
    assert paths("floyd/TIME") == ["Music/Pink Floyd/Time.flac"]


def test_a_minus_term_excludes() -> None:
    assert paths("debian -NETINST") == ["iso/debian-12-amd64-DVD-1.iso"]
    assert paths("abba -.jpg -mp3") == []
    assert paths("-music -iso -books") == ["notes.txt"]


def test_a_glob_matches_the_whole_path_ignoring_case() -> None:
    assert paths("*.ISO") == ["iso/debian-12-amd64-DVD-1.iso", "iso/debian-12-amd64-netinst.iso"]
    assert paths("*.is") == []  # the whole path, not a part of it
    assert paths("music/*") == [
        "Music/ABBA/Waterloo.mp3",
        "Music/ABBA/cover.jpg",
        "Music/Pink Floyd/Time.flac",
    ]
    assert paths("Music/Pink Floyd/*.flac") == ["Music/Pink Floyd/Time.flac"]
    assert paths("no?es.txt") == ["notes.txt"]
    assert paths("[mn]*.[tf]*") == ["Music/Pink Floyd/Time.flac", "notes.txt"]
    assert paths("[!m]*.txt") == ["notes.txt"]
    assert paths("*debian*dvd*") == ["iso/debian-12-amd64-DVD-1.iso"]


def test_a_sha256_prefix_finds_the_content() -> None:
    wanted = item("books/Linux Kernel Development.pdf").sha256
    assert paths(sha256=wanted[:8]) == ["books/Linux Kernel Development.pdf"]
    assert paths(sha256=wanted) == ["books/Linux Kernel Development.pdf"]
    assert paths(sha256=wanted[:8], q="music") == []


def test_size_bounds_are_inclusive() -> None:
    assert paths(min_size=650_000_000) == [
        "iso/debian-12-amd64-DVD-1.iso",
        "iso/debian-12-amd64-netinst.iso",
    ]
    assert paths(max_size=0) == ["notes.txt"]
    assert paths(min_size=80_000, max_size=4_000_000) == [
        "Music/ABBA/Waterloo.mp3",
        "Music/ABBA/cover.jpg",
    ]
    assert paths("abba", min_size=80_001) == ["Music/ABBA/Waterloo.mp3"]


def test_at_most_the_limit_is_answered_and_more_says_so() -> None:
    many = [item(f"photos/img{n:04d}.jpg") for n in range(250)]
    query = build_query(q="img")
    found, more = match(many, query)
    assert len(found) == MAX_MATCHES and more
    assert found == many[:MAX_MATCHES]  # the index's order
    assert match(many[:100], query) == (many[:100], False)
    assert match(many[:101], query)[1]
    assert match(many, build_query(q="img", limit=10)) == (many[:10], True)
    assert match(many, query, limit=3) == (many[:3], True)
    assert match(many[:3], query, limit=3) == (many[:3], False)
    assert match(many, build_query(q="img01")) == (many[100:200], False)


def test_precomputed_lowered_paths_give_the_same_answer() -> None:
    query = build_query(q="abba")
    assert match(SHARE, query, lowered=lowered_paths(SHARE)) == match(SHARE, query)
    with pytest.raises(ValueError, match="lengths differ"):
        match(SHARE, query, lowered=lowered_paths(SHARE[1:]))


def naive(entries: list[Item], query: Query) -> list[Item]:
    """The rules, written as plainly as possible."""

    def ok(entry: Item) -> bool:
        low = entry.path.lower()
        return (
            all(term in low for term in query.terms)
            and not any(term in low for term in query.excluded)
            and (query.glob is None or fnmatch.fnmatchcase(low, query.glob))
            and entry.sha256.startswith(query.sha256_prefix or "")
            and (query.min_size is None or entry.size >= query.min_size)
            and (query.max_size is None or entry.size <= query.max_size)
        )

    return [entry for entry in entries if ok(entry)]


_PATH_PART = st.text("aAbBé/-. *?[]!", min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_PATH_PART, st.integers(0, 50)), max_size=60),
    st.text("aAbBé/-.*?[]! ", min_size=1, max_size=20).filter(
        lambda t: t.strip() and "-" not in t.split() and len(t.split()) <= 8
    ),
    st.none() | st.integers(0, 50),
    st.none() | st.integers(0, 50),
    st.integers(1, 5),
)
def test_match_follows_the_rules(
    listed: list[tuple[str, int]],
    text: str,
    low: int | None,
    high: int | None,
    limit: int,
) -> None:
    if low is not None and high is not None and low > high:
        low, high = high, low
    entries = [item(path, size) for path, size in listed]
    query = build_query(q=text, min_size=low, max_size=high, limit=limit)
    expected = naive(entries, query)
    assert match(entries, query) == (expected[:limit], len(expected) > limit)


def test_a_member_searches_in_bursts_then_at_the_rate() -> None:
    limiter = SearchLimiter(rate=5.0, burst=10)
    assert [limiter.admit("alice", 100.0) for _ in range(10)] == [0.0] * 10
    assert limiter.admit("alice", 100.0) == pytest.approx(0.2)
    assert limiter.admit("alice", 100.1) == pytest.approx(0.1)  # refusals cost nothing
    assert limiter.admit("alice", 100.2) == 0.0
    assert limiter.admit("alice", 100.2) > 0
    assert limiter.admit("bob", 100.2) == 0.0  # per member
    assert [limiter.admit("alice", 102.2 + n / 5) for n in range(20)].count(0.0) == 20


def test_a_clock_stepping_back_grants_nothing() -> None:
    limiter = SearchLimiter(rate=1.0, burst=1)
    assert limiter.admit("alice", 50.0) == 0.0
    assert limiter.admit("alice", 10.0) > 0
    assert limiter.admit("alice", 50.5) == pytest.approx(0.5)
    assert limiter.admit("alice", 51.0) == 0.0


def test_limiter_memory_is_bounded_and_forgets_the_idle_first() -> None:
    limiter = SearchLimiter(rate=5.0, burst=2, max_members=100)
    limiter.admit("busy", 0.0)
    limiter.admit("busy", 0.0)
    for n in range(10_000):
        limiter.admit(f"member-{n}", 0.0)
        if n % 50 == 0:
            limiter.admit("busy", 0.0)  # still refused: it is kept, not forgotten
            assert limiter.admit("busy", 0.0) > 0
    assert len(limiter) == 100


@pytest.mark.parametrize("bad", [{"rate": 0.0}, {"burst": 0}, {"max_members": 0}, {"rate": -1.0}])
def test_a_limiter_needs_positive_settings(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="positive"):
        SearchLimiter(**bad)  # type: ignore[arg-type]
