"""Pure pieces of p2pd: target decoding, ranges, digests, members, the token bucket."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest

from p2pd.fetch.names import free_name, numbered
from p2pd.fetch.partial import existing_copy, place, resume_state
from p2pd.peer.files import BadTarget, decode_file_target, parse_range, repr_digest
from p2pd.peer.ratelimit import Allowance, TokenBucket


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("/files/a.txt", "a.txt"),
        ("/files/dir/sub/b.bin", "dir/sub/b.bin"),
        ("/files/caf%C3%A9%20menu.txt", "café menu.txt"),
        ("/files/with%3Fquestion", "with?question"),
        ("/files/x.txt?ignored=1", "x.txt"),
    ],
)
def test_file_targets_decode_to_relative_paths(target: str, path: str) -> None:
    assert decode_file_target(target) == path


@pytest.mark.parametrize(
    "target",
    [
        "/files/../etc/passwd",
        "/files/a/../../etc/passwd",
        "/files/%2e%2e/etc/passwd",
        "/files/%2E%2E%2Fetc%2Fpasswd",
        "/files/a/%2e%2e/%2e%2e/x",
        "/files//etc/passwd",
        "/files/%2Fetc%2Fpasswd",
        "/files/a%00.txt",
        "/files/a\\..\\b",
        "/files/a%5C..%5Cb",
        "/files/./a",
        "/files/",
        "/files/%zz",
        "/files/%ff%fe",
        "/files/" + "a" * 5000,
        "/files/a%0Ab",
    ],
)
def test_traversal_and_malformed_spellings_are_refused(target: str) -> None:
    with pytest.raises(BadTarget):
        decode_file_target(target)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-99", (0, 99)),
        ("bytes=100-", (100, 999)),
        ("bytes=-10", (990, 999)),
        ("bytes=990-5000", (990, 999)),
        ("bytes=-5000", (0, 999)),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
    ],
)
def test_ranges(header: str, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5-4", "bytes=-0"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(ValueError):
        parse_range(header, 1000)


def test_repr_digest_is_rfc9530_sha256() -> None:
    digest = hashlib.sha256(b"hello").digest()
    assert repr_digest(digest.hex()) == f"sha-256=:{base64.b64encode(digest).decode()}:"


def test_an_allowance_refuses_past_its_burst_and_refills_at_its_rate() -> None:
    allowance = Allowance(rate=2, burst=3)
    assert [allowance.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert allowance.allow(0.5) and not allowance.allow(0.5)  # one token in half a second
    assert [allowance.allow(100.0) for _ in range(4)] == [True, True, True, False]  # capped


def test_token_bucket_spreads_bytes_at_the_rate() -> None:
    bucket = TokenBucket(rate=1000, burst=1000, clock=lambda: 0.0)
    assert bucket.reserve(1000, now=0.0) == 0  # the burst
    assert bucket.reserve(500, now=0.0) == pytest.approx(0.5)
    # A second uploader queues behind the first: the rate is global.
    assert bucket.reserve(500, now=0.0) == pytest.approx(1.0)
    assert bucket.reserve(0, now=1.0) == 0
    assert bucket.reserve(1000, now=2.0) == 0  # refilled, never above the burst
    assert bucket.reserve(1, now=2.0) == pytest.approx(0.001)


@pytest.mark.parametrize(
    ("name", "number", "expected"),
    [
        ("a.txt", 1, "a (1).txt"),
        ("a.tar.gz", 2, "a.tar (2).gz"),
        ("README", 1, "README (1)"),
        ("a.txt", 0, "a.txt"),
        ("x" * 250 + ".txt", 0, "x" * 250 + ".txt"),
        # 254 bytes: the stem is shortened so that the name keeps NAME_MAX bytes.
        ("x" * 250 + ".txt", 1, "x" * 247 + " (1).txt"),
        ("x" * 250 + ".txt", 12, "x" * 246 + " (12).txt"),
        ("x" * 251, 1, "x" * 251 + " (1)"),
        ("x" * 254, 1, "x" * 251 + " (1)"),
        # Cut between characters, never inside one: é is 2 bytes, ☃ is 3.
        ("é" * 125 + ".txt", 1, "é" * 123 + " (1).txt"),
        ("☃" * 83 + ".txt", 1, "☃" * 82 + " (1).txt"),
        # A suffix too long to keep: the whole name is the stem.
        ("x." + "y" * 252, 1, "x." + "y" * 249 + " (1)"),
    ],
)
def test_numbered_names_fit_in_name_max(name: str, number: int, expected: str) -> None:
    result = numbered(Path("/d") / name, number)
    assert result.parent == Path("/d")
    assert result.name == expected
    assert len(result.name.encode()) <= 255


def test_a_long_taken_name_gets_a_free_shortened_one(tmp_path: Path) -> None:
    """A taken 254-byte name: looking for a copy and placing work (no ENAMETOOLONG)."""
    name = "Grüße " + "x" * 242 + ".txt"
    assert len(name.encode()) == 254
    taken = tmp_path / name
    taken.write_text("mine")
    theirs = hashlib.sha256(b"theirs").hexdigest()
    assert existing_copy(tmp_path, name, theirs, 6) is None
    partial = resume_state(tmp_path, theirs, 6)
    try:
        os.pwrite(partial.fd, b"theirs", 0)
        partial.digest.update(b"theirs")
        placed = tmp_path / place(tmp_path, partial, theirs, 6, name)
    finally:
        os.close(partial.fd)
    assert placed.name.endswith(" (1).txt") and placed.name.startswith("Grüße xxx")
    assert len(placed.name.encode()) == 255
    assert placed.read_bytes() == b"theirs" and taken.read_text() == "mine"
    assert existing_copy(tmp_path, name, theirs, 6) == placed.name
    assert free_name(taken, os.path.lexists).name.endswith(" (2).txt")
