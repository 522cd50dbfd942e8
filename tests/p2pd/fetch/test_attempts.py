"""The attempt planner of a transfer, without sockets: states, sources, rounds, failures."""

from __future__ import annotations

import base64
import errno
import random
from pathlib import Path

import pytest

from p2pcommon.backoff import Backoff
from p2pcommon.models import Member
from p2pd.fetch.attempts import (
    MAX_ATTEMPTS,
    MIN_PROGRESS,
    PROGRESS_WINDOW,
    Attempts,
    Changed,
    Fatal,
    ProgressWindow,
    Retry,
    changed,
    check_framing,
    check_queued,
    check_repr_digest,
    fatal_os_error,
    is_final,
    refused,
    verified,
)
from p2pd.fetch.model import Queued, State

SHA = "ab" * 32


def member(name: str) -> Member:
    return Member(id=name * 13, name=name, addresses=["127.0.0.1:1"], cert="PEM", last_seen=0)


BOB, CAROL, DAVE = member("bob"), member("carol"), member("dave")


def test_states_are_the_strings_the_json_shows() -> None:
    assert [s.value for s in State] == [
        "queued",
        "connecting",
        "downloading",
        "waiting",
        "placing",
        "cancelling",
        "done",
        "failed",
        "cancelled",
    ]
    assert str(State.WAITING) == "waiting" and f"{State.PLACING}" == "placing"
    assert State.ended("ok") is State.DONE
    assert State.ended("failed") is State.FAILED
    assert State.ended("cancelled") is State.CANCELLED


def test_only_a_transfer_on_its_way_can_be_joined() -> None:
    joinable = {s for s in State if s.joinable}
    assert joinable == {
        State.QUEUED,
        State.CONNECTING,
        State.DOWNLOADING,
        State.WAITING,
        State.PLACING,
    }


@pytest.mark.parametrize(
    ("status", "final"),
    [
        (400, True),
        (401, True),
        (403, False),
        (410, True),
        (416, True),
        (404, False),
        (408, False),
        (429, False),
        (500, False),
        (503, False),
    ],
)
def test_which_answers_are_final(status: int, final: bool) -> None:
    assert is_final(status) is final
    failure = refused(status, "why")
    assert str(failure) == f"answered {status}: why"
    assert failure.final is final


def test_round_zero_asks_the_chosen_member_only() -> None:
    plan = Attempts("bob")
    assert not plan.asks_alternates(chosen_is_member=True)
    assert plan.sources((BOB, "a.bin"), [(CAROL, "c.bin")]) == [(BOB, "a.bin")]


def test_round_zero_without_the_chosen_member_asks_the_alternates() -> None:
    plan = Attempts("bob")
    assert plan.asks_alternates(chosen_is_member=False)
    assert plan.sources(None, [(CAROL, "c.bin"), (DAVE, "d.bin")]) == [
        (CAROL, "c.bin"),
        (DAVE, "d.bin"),
    ]
    assert plan.reason == "bob is offline"


def test_later_rounds_ask_the_chosen_member_first_then_each_alternate_once() -> None:
    plan = Attempts("bob", backoff=Backoff(base=0.5, cap=10.0, rng=random.Random(1)))
    assert plan.failed("bob", Retry("connection lost")) is None
    assert isinstance(plan.round_over(), float)
    assert plan.asks_alternates(chosen_is_member=True)
    alternates = [(CAROL, "c.bin"), (BOB, "other.bin"), (DAVE, "d.bin"), (CAROL, "again")]
    assert plan.sources((BOB, "a.bin"), alternates) == [
        (BOB, "a.bin"),
        (CAROL, "c.bin"),
        (DAVE, "d.bin"),
    ]


def test_a_final_refusal_ends_the_transfer_at_once() -> None:
    plan = Attempts("bob")
    ending = plan.failed("bob", refused(400, "bad target"))
    assert isinstance(ending, Fatal)
    assert str(ending) == "bob: answered 400: bad target"
    assert not ending.keep_partial


def test_changed_everywhere_ends_the_transfer_but_changed_somewhere_does_not() -> None:
    plan = Attempts("bob")
    assert plan.failed("bob", changed("a.bin")) is None
    assert plan.failed("carol", Retry("connection lost")) is None
    assert isinstance(plan.round_over(), float)  # carol only went away: next round
    assert plan.failed("bob", changed("a.bin")) is None
    assert plan.failed("carol", changed("c.bin")) is None
    ending = plan.round_over()
    assert isinstance(ending, Fatal)
    assert str(ending).startswith("carol: c.bin changed since it was listed")
    assert "list it again and fetch the new version" in str(ending)
    assert isinstance(changed("x"), Changed)


def test_a_round_with_no_source_is_not_changed_everywhere() -> None:
    plan = Attempts("bob")
    assert isinstance(plan.round_over(), float)


def test_after_the_last_round_it_gives_up_and_keeps_the_partial_file() -> None:
    rng = random.Random(7)
    plan = Attempts("bob", backoff=Backoff(base=0.5, cap=10.0, rng=rng))
    delays = []
    for _ in range(MAX_ATTEMPTS - 1):
        plan.failed("bob", Retry("no answer within 30 s"))
        delay = plan.round_over()
        assert isinstance(delay, float)
        delays.append(delay)
    plan.failed("bob", Retry("no answer within 30 s"))
    ending = plan.round_over()
    assert isinstance(ending, Fatal)
    assert str(ending) == f"gave up after {MAX_ATTEMPTS} attempts: bob: no answer within 30 s"
    assert ending.keep_partial
    # Full jitter, 0.5 s doubling up to 10 s.
    for number, delay in enumerate(delays):
        assert 0 <= delay <= min(10.0, 0.5 * 2**number)


def test_nobody_to_ask_gives_up_with_the_chosen_member_offline() -> None:
    plan = Attempts("bob", rounds=2)
    assert isinstance(plan.round_over(), float)
    ending = plan.round_over()
    assert isinstance(ending, Fatal)
    assert str(ending) == "gave up after 2 attempts: bob is offline"


def test_framing_must_be_exactly_the_listed_bytes_from_the_offset() -> None:
    check_framing(200, [("content-length", "10")], 10, 0)
    check_framing(206, [("content-length", "6"), ("content-range", "bytes 4-9/10")], 10, 4)
    with pytest.raises(Changed, match="announced 11 where 10 bytes were expected"):
        check_framing(200, [("content-length", "11")], 10, 0)
    with pytest.raises(Changed, match="announced no length"):
        check_framing(200, [], 10, 0)
    with pytest.raises(Changed, match="another range than the bytes from 4"):
        check_framing(206, [("content-length", "6"), ("content-range", "bytes 0-5/10")], 10, 4)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        # RFC 9112 §6.3: both is suspect, whatever h11 makes of it.
        ([("content-length", "10"), ("transfer-encoding", "chunked")], "Transfer-Encoding"),
        ([("transfer-encoding", "chunked")], "Transfer-Encoding: chunked"),
        ([("transfer-encoding", "identity"), ("content-length", "10")], "Transfer-Encoding"),
        ([("content-length", "10"), ("content-length", "10")], "announced 10, 10 where"),
        ([("content-length", "+10")], "announced \\+10 where"),
        ([("content-length", "١٠")], "where 10 bytes"),  # digits, but not ASCII ones
        ([("content-length", "")], "where 10 bytes"),
    ],
)
def test_any_other_framing_is_refused_as_not_our_protocol(
    fields: list[tuple[str, str]], words: str
) -> None:
    with pytest.raises(Changed, match=words):
        check_framing(200, fields, 10, 0)


def test_a_206_must_name_exactly_the_rest_of_the_file() -> None:
    for content_range in ["bytes 4-8/10", "bytes 4-9/11", "bytes 4-9/*", "bytes 4-"]:
        with pytest.raises(Changed, match="another range"):
            check_framing(206, [("content-length", "6"), ("content-range", content_range)], 10, 4)


def test_repr_digest_is_required_and_names_the_listed_bytes() -> None:
    """docs/protocol.md §4.3: missing or unreadable, the member does not speak the protocol."""
    ours = "sha-256=:" + base64.b64encode(bytes.fromhex(SHA)).decode() + ":"
    other = "sha-256=:" + base64.b64encode(bytes(32)).decode() + ":"
    sha512 = "sha-512=:" + base64.b64encode(bytes(64)).decode() + ":"
    check_repr_digest(ours, SHA, "a.bin")
    check_repr_digest(f"{sha512}, {ours}", SHA, "a.bin")  # an RFC 9530 dictionary
    check_repr_digest(f"{ours};note=1", SHA, "a.bin")
    with pytest.raises(Changed, match="a.bin changed since it was listed"):
        check_repr_digest(other, SHA, "a.bin")
    for value, words in [
        (None, "the answer has no Repr-Digest header"),
        ("sha-256=abc", "has no single sha-256 digest"),
        (sha512, "has no single sha-256 digest"),
        (f"{ours}, {other}", "has no single sha-256 digest"),
        (SHA, "has no single sha-256 digest"),  # the listing's hex is not the header's form
    ]:
        with pytest.raises(Changed, match=words) as caught:
            check_repr_digest(value, SHA, "a.bin")
        assert "does not speak the p2pd peer protocol (docs/protocol.md §4.3)" in str(caught.value)
        assert "changed since it was listed" not in str(caught.value)


def test_a_trickle_ends_the_attempt() -> None:
    window = ProgressWindow(start=0.0)
    window.add(MIN_PROGRESS, PROGRESS_WINDOW)  # enough: a new window starts
    window.add(10, PROGRESS_WINDOW + 1)
    with pytest.raises(Retry, match=f"sent 11 bytes in {PROGRESS_WINDOW:g} s: too slow"):
        window.add(1, 2 * PROGRESS_WINDOW)


def test_verification() -> None:
    verified(3, SHA, 3, SHA)
    with pytest.raises(Retry, match="hash mismatch: the file holds 2 bytes where 3"):
        verified(3, SHA, 2, SHA)
    with pytest.raises(Retry, match="the file holds 4 bytes where 3"):
        verified(3, SHA, 4, SHA)  # more on disk than listed: never placed
    with pytest.raises(Retry, match="hash mismatch"):
        verified(3, SHA, 3, "cd" * 32)


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "disk full writing /d: free some space"),
        (errno.EROFS, "/d is on a read-only file system"),
        (errno.EACCES, "permission denied writing /d"),
        (errno.EIO, "cannot write /d"),
    ],
)
def test_local_errors_say_what_to_do(code: int, words: str) -> None:
    ending = fatal_os_error(OSError(code, "strerror"), Path("/d"))
    assert words in str(ending)
    assert not ending.keep_partial


@pytest.mark.parametrize(
    ("sha256", "path", "size", "words"),
    [
        ("nothex", "a.bin", 1, "invalid sha256"),
        (SHA, "../etc/passwd", 1, "refusing '../etc/passwd'"),
        (SHA, "a.bin", -1, "negative size"),
    ],
)
def test_unsafe_queued_transfers_are_refused(sha256: str, path: str, size: int, words: str) -> None:
    with pytest.raises(Fatal, match=words):
        check_queued(Queued("id", "p", "bob", path, sha256, size, 0.0))
    check_queued(Queued("id", "p", "bob", "a.bin", SHA, 0, 0.0))
