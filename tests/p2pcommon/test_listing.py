"""A member's listing is parsed once, at the edge, by the rule the server serves by."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from p2pcommon.models import Listing, validation_reason
from p2pcommon.paths import UnsafePath, check_relpath, is_safe_relpath

GOOD = {"path": "music/a b.ogg", "size": 3, "mtime": 1.5, "sha256": "ab" * 32}


def listing_of(**changes: object) -> bytes:
    return json.dumps({"generation": 1, "files": [{**GOOD, **changes}]}).encode()


def test_a_good_listing_parses_into_typed_entries() -> None:
    (entry,) = Listing.model_validate_json(listing_of()).files
    assert (entry.path, entry.size, entry.sha256) == ("music/a b.ogg", 3, "ab" * 32)
    assert entry.to_json() == GOOD


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"sha256": "zz" * 32}, "sha256"),
        ({"sha256": "../../x"}, "sha256"),
        ({"sha256": "AB" * 32}, "sha256"),
        ({"size": -1}, "size"),
        ({"size": "3"}, "size"),
        ({"path": "../etc/passwd"}, "path"),
        ({"path": "/etc/passwd"}, "path"),
        ({"path": "a\\b"}, "path"),
        ({"path": "a\nb"}, "path"),
        ({"path": "a\x1b[31mred"}, "path"),
        ({"path": ".ssh/id_rsa"}, "path"),
        ({"path": "x" * 256}, "path"),
        ({"path": ""}, "path"),
    ],
)
def test_an_invalid_entry_is_refused_naming_the_field(
    changes: dict[str, object], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        Listing.model_validate_json(listing_of(**changes))
    assert f"files.0.{field}" in validation_reason(caught.value)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 5000,
        b'{"files":' + b"[" * 5000,
        b"[" * 10_000_000,
        b'{"generation": 1, "files": [{"path": "\\ud800", "size": 1, "mtime": 0, "sha256": "'
        + b"ab" * 32
        + b'"}]}',
        b"\xff\xfe",
        b"",
    ],
)
def test_hostile_bodies_are_invalid_listings_not_crashes(body: bytes) -> None:
    with pytest.raises(ValidationError):
        Listing.model_validate_json(body)


def test_the_path_rule_explains_itself() -> None:
    assert check_relpath("a/b.txt") == "a/b.txt"
    for bad, why in [
        ("a/../b", "'..'"),
        ("caf\udce9", "UTF-8"),
        ("a/.hidden", "hidden"),
        ("tab\there", "control"),
    ]:
        with pytest.raises(UnsafePath, match=why):
            check_relpath(bad)


@given(st.text(max_size=60))
def test_a_safe_path_never_leaves_the_folder(path: str) -> None:
    if is_safe_relpath(path):
        parts = path.split("/")
        assert ".." not in parts and not path.startswith("/") and "\x00" not in path
        path.encode("utf-8")
