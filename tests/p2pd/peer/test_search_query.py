"""The search query a member is asked: parsed once from the target, bounded, every refusal named."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pd.peer.search import (
    MAX_MATCHES,
    MAX_SIZE,
    Query,
    QueryError,
    build_query,
    parse_target,
)

HASH = "0123456789abcdef" * 4


def test_a_full_target_reads_every_criterion() -> None:
    query = parse_target(
        b"/search?q=Debian+ISO+-netinst&sha256=0123abcd&min_size=10&max_size=2000&limit=7"
    )
    assert query == Query(
        text="Debian ISO -netinst",
        terms=("debian", "iso"),
        excluded=("netinst",),
        sha256_prefix="0123abcd",
        min_size=10,
        max_size=2000,
        limit=7,
    )


@pytest.mark.parametrize(
    ("target", "terms"),
    [
        ("/search?q=caf%C3%A9%20MENU", ("café", "menu")),
        ("/search?q=a%2Bb", ("a+b",)),
        ("/search?q=%20%20spaced++out%20", ("spaced", "out")),
        ("/search?q=report&&", ("report",)),
        ("/search?&q=report", ("report",)),
    ],
)
def test_terms_are_decoded_split_and_lowercased(target: str, terms: tuple[str, ...]) -> None:
    assert parse_target(target).terms == terms


@pytest.mark.parametrize(
    ("text", "glob"),
    [
        ("*.ISO", "*.iso"),
        ("Pink Floyd/*.flac", "pink floyd/*.flac"),
        ("photo-??.jpg", "photo-??.jpg"),
        ("[ab]*", "[ab]*"),
        ("-*.tmp", "-*.tmp"),
    ],
)
def test_a_glob_character_makes_the_whole_text_one_glob(text: str, glob: str) -> None:
    query = build_query(q=text)
    assert (query.glob, query.terms, query.excluded) == (glob, (), ())


def test_the_largest_query_allowed_is_accepted() -> None:
    eight_terms = " ".join(["x" * 31] * 8)
    assert len(eight_terms) <= 256
    assert len(build_query(q=eight_terms).terms) == 8
    assert build_query(q="y" * 256).terms == ("y" * 256,)
    assert build_query(q="*" * 256).glob == "*" * 256
    assert build_query(sha256=HASH).sha256_prefix == HASH
    assert build_query(min_size=0, max_size=MAX_SIZE).max_size == MAX_SIZE
    assert build_query(min_size=5, max_size=5, limit=1).limit == 1
    assert parse_target("/search?max_size=9223372036854775807").max_size == MAX_SIZE


@pytest.mark.parametrize(
    ("target", "field"),
    [
        ("/search", "q"),
        ("/search?", "q"),
        ("/search?limit=5", "q"),
        ("/search?q=" + "a" * 257, "q"),
        ("/search?q=" + "+".join("abcdefghi"), "q"),
        ("/search?q=-", "q"),
        ("/search?q=a+-+b", "q"),
        ("/search?q=", "q"),
        ("/search?q=+++", "q"),
        ("/search?q=a%00b", "q"),
        ("/search?q=a%0Ab", "q"),
        ("/search?q=a%09b", "q"),
        ("/search?q=a%C2%85b", "q"),
        ("/search?q=%zz", "q"),
        ("/search?q=abc%4", "q"),
        ("/search?q=%ff", "q"),
        ("/search?q=a&q=b", "q"),
        ("/search?q", "q"),
        ("/search?sha256=0123abc", "sha256"),
        ("/search?sha256=0123ABCD", "sha256"),
        ("/search?sha256=0123abcg", "sha256"),
        ("/search?sha256=" + HASH + "0", "sha256"),
        ("/search?sha256=", "sha256"),
        ("/search?min_size=-1", "min_size"),
        ("/search?min_size=1.5", "min_size"),
        ("/search?min_size=", "min_size"),
        ("/search?min_size=0x10", "min_size"),
        ("/search?min_size=+5", "min_size"),
        ("/search?max_size=9223372036854775808", "max_size"),
        ("/search?max_size=12345678901234567890", "max_size"),
        ("/search?min_size=10&max_size=9", "max_size"),
        ("/search?q=a&limit=0", "limit"),
        ("/search?q=a&limit=101", "limit"),
        ("/search?q=a&limit=ten", "limit"),
        ("/search?q=a&Q=b", "target"),
        ("/search?q=a&name=b", "target"),
        ("/search?q=a&%ff=b", "target"),
        ("/search?q=a#top", "target"),
        ("/search/?q=a", "target"),
        ("/searching?q=a", "target"),
        ("/files/a?q=a", "target"),
        ("/search?q=a&sha256=" + "0" * 4096, "target"),
    ],
)
def test_a_bad_target_is_refused_naming_the_field(target: str, field: str) -> None:
    with pytest.raises(QueryError) as refused:
        parse_target(target)
    assert refused.value.field == field
    assert str(refused.value).startswith(f"{field}: ")


@pytest.mark.parametrize("target", ["/search?q=café".encode(), "/search?q=café"])
def test_a_target_with_raw_non_ascii_is_refused(target: str | bytes) -> None:
    with pytest.raises(QueryError, match="target: has non-ASCII characters"):
        parse_target(target)


def test_an_unknown_parameter_is_named_briefly() -> None:
    with pytest.raises(QueryError) as refused:
        parse_target("/search?q=a&" + "x" * 2000 + "%0A=1")
    assert refused.value.field == "target"
    assert "unknown parameter 'xxxx" in str(refused.value)
    assert len(str(refused.value)) < 120


@pytest.mark.parametrize(
    ("criteria", "field"),
    [
        ({}, "q"),
        ({"q": "x", "limit": -1}, "limit"),
        ({"min_size": -1}, "min_size"),
        ({"max_size": MAX_SIZE + 1}, "max_size"),
        ({"min_size": 2, "max_size": 1}, "max_size"),
        ({"sha256": "0123abc"}, "sha256"),
        ({"q": "caf\udce9"}, "q"),  # undecodable bytes from a command line
    ],
)
def test_building_a_bad_query_names_the_field(criteria: dict[str, object], field: str) -> None:
    with pytest.raises(QueryError) as refused:
        build_query(**criteria)  # type: ignore[arg-type]
    assert refused.value.field == field


def test_messages_say_what_to_do() -> None:
    with pytest.raises(QueryError, match="give 8 at most"):
        build_query(q="a b c d e f g h i")
    with pytest.raises(QueryError, match="swap them"):
        build_query(min_size=3, max_size=2)


@st.composite
def queries(draw: st.DrawFn) -> Query:
    text = draw(
        st.none()
        | st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]), max_size=256)
        .filter(lambda t: t.strip() != "")
        .filter(lambda t: len(t.split()) <= 8 and "-" not in t.split())
    )
    sha256 = draw(st.none() | st.text("0123456789abcdef", min_size=8, max_size=64))
    low = draw(st.none() | st.integers(0, MAX_SIZE))
    high = draw(st.none() | st.integers(low or 0, MAX_SIZE))
    if text is None and sha256 is None and low is None and high is None:
        high = 0
    limit = draw(st.integers(1, MAX_MATCHES))
    return build_query(q=text, sha256=sha256, min_size=low, max_size=high, limit=limit)


@given(queries())
def test_a_query_sent_as_a_target_is_read_back_unchanged(query: Query) -> None:
    target = query.target()
    assert target.isascii()
    assert parse_target(target.encode("ascii")) == query


def query_or_refusal(target: str | bytes) -> Query | QueryError:
    try:
        return parse_target(target)
    except QueryError as refusal:
        return refusal


_WIRE = "qsha256min_zelit=&%+-*?[]0123456789abcdefABCDEF#/é\x00 "


@given(st.text(max_size=300) | st.text(_WIRE, max_size=300))
def test_any_target_gives_a_query_or_a_query_error(text: str) -> None:
    candidates = (text, "/search?" + text, "/search?q=" + text, f"/search?{text}".encode())
    for candidate in candidates:
        assert isinstance(query_or_refusal(candidate), Query | QueryError)
