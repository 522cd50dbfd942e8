"""A small file is written, verified and placed in one go: never unverified at a
final name, never over an existing file, no partial file left behind."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from p2pd.fetch.attempts import Retry
from p2pd.fetch.names import partial_path
from p2pd.fetch.partial import store_small

DATA = b"small file " * 100
SHA = hashlib.sha256(DATA).hexdigest()


def test_verified_bytes_go_to_a_free_name_beside_the_destination(tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "a.txt"
    dest.parent.mkdir()
    dest.write_bytes(b"someone else's")
    partial = partial_path(tmp_path, SHA)
    partial.write_bytes(b"left by a crash, longer than the file itself" * 100)
    placed = tmp_path / store_small(tmp_path, SHA, len(DATA), [DATA[:7], DATA[7:]], "sub/a.txt")
    assert placed == tmp_path / "sub" / "a (1).txt"
    assert placed.read_bytes() == DATA  # rewritten from the start, not appended to
    assert dest.read_bytes() == b"someone else's"
    assert not partial.exists()


def test_bytes_that_hash_wrong_are_refused_and_not_kept(tmp_path: Path) -> None:
    with pytest.raises(Retry, match="hash mismatch"):
        store_small(tmp_path, SHA, len(DATA), [b"not the listed bytes"], "a.txt")
    assert list(tmp_path.iterdir()) == []


def test_more_bytes_than_listed_are_never_placed(tmp_path: Path) -> None:
    with pytest.raises(Retry, match="holds 1101 bytes where 1100 were listed"):
        store_small(tmp_path, SHA, len(DATA), [DATA, b"!"], "a.txt")
    assert list(tmp_path.iterdir()) == []
