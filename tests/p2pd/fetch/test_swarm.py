"""p2pd/fetch/swarm.py: one download from many members, driven by simulated members and clock."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pd.fetch.swarm import (
    MAX_IN_FLIGHT,
    MAX_SOURCES,
    PROBE_IN_FLIGHT,
    STALL_FIRST,
    STALL_FLOOR,
    Request,
    SourceReport,
    Swarm,
)
from p2pd.share.merkle import piece_count, piece_range
from tests.p2pd.fetch.swarm_sim import Member, Simulation, check_invariants

KiB = 1024
MiB = 1024 * KiB
PIECE = 64 * KiB
SIZE = 16 * MiB  # 256 pieces


def swarm_of(
    size: int = SIZE, piece_size: int = PIECE, seed: int = 1, verified: Iterable[int] = ()
) -> Swarm:
    return Swarm(size, piece_size, random.Random(seed), verified)


def report(swarm: Swarm, member_id: str) -> SourceReport:
    return next(r for r in swarm.sources() if r.id == member_id)


def assert_no_piece_asked_after_it_was_verified(sim: Simulation) -> None:
    for asked in sim.asked:
        assert asked.at < sim.verified_at[asked.request.piece], asked


def test_each_piece_from_one_member_at_a_time_and_the_faster_gets_more() -> None:
    swarm = swarm_of()
    sim = Simulation(swarm, [Member("fast", 4e6), Member("slow", 1e6)])
    sim.run()
    fast, slow = sim.pieces_from("fast"), sim.pieces_from("slow")
    assert fast + slow == swarm.count == 256
    assert 3 < fast / slow < 5.5
    assert swarm.bytes_verified == SIZE
    assert_no_piece_asked_after_it_was_verified(sim)
    assert sum(asked.backup for asked in sim.asked) <= 2
    order = [asked.request.piece for asked in sim.asked]
    assert order != sorted(order), "pieces are asked in random order"
    # No slow tail: about as soon as both rates together allow.
    assert sim.now < 1.1 * SIZE / 5e6 + 0.2


def test_the_order_follows_the_seed() -> None:
    def first_pieces(seed: int) -> list[int]:
        swarm = swarm_of(seed=seed)
        swarm.add_source("a", 0.0)
        return [request.piece for request in swarm.next_requests("a", 0.0)]

    assert first_pieces(5) == first_pieces(5)
    assert len({tuple(first_pieces(seed)) for seed in range(10)}) > 1


@pytest.mark.parametrize(
    "lies", [lambda piece: True, lambda piece: piece % 5 == 0], ids=["always", "damaged copy"]
)
def test_a_liar_is_dropped_at_its_first_bad_piece_and_the_honest_finish(
    lies: Callable[[int], bool],
) -> None:
    swarm = swarm_of()
    mallory = Member("mallory", 8e6, lies=lies)
    sim = Simulation(swarm, [Member("alice", 2e6), Member("bob", 2e6), mallory])
    sim.run()
    assert swarm.complete
    bad = next(a for a in sim.asked_of("mallory") if a.done and mallory.lies(a.request.piece))
    assert all(asked.at <= bad.at for asked in sim.asked_of("mallory"))
    assert swarm.next_requests("mallory", sim.now) == []
    liar = report(swarm, "mallory")
    assert liar.bad_pieces == 1
    assert liar.state == "dropped"
    assert liar.liar is True
    assert liar.reason == f"sent piece {bad.request.piece}, which failed verification"
    assert liar.wasted_bytes == swarm.wasted_bytes == PIECE
    assert swarm.liars() == ["mallory"]
    # The bad piece, and the ones mallory still held, came from the others.
    assert sim.verified_at[bad.request.piece] > bad.at
    honest = report(swarm, "alice").bytes, report(swarm, "bob").bytes
    assert sum(honest) + liar.bytes == SIZE
    assert_no_piece_asked_after_it_was_verified(sim)


def test_a_member_that_stalls_gives_its_pieces_to_the_others() -> None:
    swarm = swarm_of()
    sim = Simulation(swarm, [Member("alice", 0.5e6), Member("sloth", 2e6, stall_after=3)])
    sim.run()
    assert sim.pieces_from("sloth") == 3
    assert sim.pieces_from("alice") == swarm.count - 3
    assert sim.stall_cancels
    assert {request.source for request in sim.stall_cancels} == {"sloth"}
    assert not swarm.in_flight("sloth")
    # Alice alone would take SIZE / 0.5e6 = 33.6 s; the stall costs her nothing.
    assert sim.now < SIZE / 0.5e6 + 2


def test_a_stalled_member_holds_up_only_the_endgame_briefly() -> None:
    swarm = swarm_of()
    sim = Simulation(swarm, [Member("alice", 2e6), Member("sloth", 4e6, stall_after=3)])
    sim.run()
    # Before the stall is even detected (STALL_FLOOR), alice took sloth's pieces as backups.
    assert sim.now < STALL_FLOOR
    assert sim.pieces_from("alice") == swarm.count - 3
    backups = [asked for asked in sim.asked if asked.backup]
    assert backups and all(asked.request.source == "alice" for asked in backups)


def test_a_member_that_vanishes_gives_its_pieces_back_and_is_dropped_after_retries() -> None:
    swarm = swarm_of(size=64 * MiB)
    vanishing = Member("ghost", 4e6, vanish_at=1.0)
    sim = Simulation(swarm, [Member("alice", 1e6), vanishing])
    sim.run()
    assert swarm.complete
    ghost = report(swarm, "ghost")
    assert ghost.pieces == len([a for a in sim.asked_of("ghost") if a.done])
    assert 0 < ghost.bytes < 4.5e6
    assert ghost.state == "dropped"
    assert ghost.reason == "connection refused (3 times in a row)"
    retries = sorted({asked.at for asked in sim.asked_of("ghost") if asked.at > 1.0})
    assert retries == pytest.approx([6.0, 36.0])
    assert_no_piece_asked_after_it_was_verified(sim)


def test_a_member_that_joins_late_takes_part() -> None:
    swarm = swarm_of()
    sim = Simulation(swarm, [Member("alice", 1e6), Member("bob", 3e6, join_at=2.0)])
    sim.run()
    assert min(asked.at for asked in sim.asked_of("bob")) == 2.0
    assert sim.pieces_from("bob") > sim.pieces_from("alice")
    assert sim.now < 2.0 + (SIZE - 2e6) / 4e6 + 0.5


def test_resume_never_asks_for_verified_pieces() -> None:
    done = set(range(0, 256, 3))
    swarm = swarm_of(verified=done)
    assert swarm.bytes_verified == len(done) * PIECE
    assert swarm.pieces_verified == len(done)
    sim = Simulation(swarm, [Member("alice", 2e6), Member("bob", 1e6)])
    sim.run()
    asked = [a.request.piece for a in sim.asked]
    assert not done & set(asked)
    assert len(asked) - sum(a.backup for a in sim.asked) == 256 - len(done)
    assert report(swarm, "alice").bytes + report(swarm, "bob").bytes == ((256 - len(done)) * PIECE)


def test_nothing_to_do_for_a_complete_or_empty_content() -> None:
    for swarm in (swarm_of(verified=set(range(256))), swarm_of(size=0)):
        assert swarm.complete
        swarm.add_source("a", 0.0)
        assert swarm.next_requests("a", 0.0) == []
    with pytest.raises(IndexError, match="piece 256 is outside this content's 256 pieces"):
        swarm_of(verified={256})


def test_the_last_piece_is_shorter() -> None:
    swarm = swarm_of(size=PIECE + 10)
    swarm.add_source("a", 0.0)
    requests = sorted(swarm.next_requests("a", 0.0), key=lambda r: r.piece)
    assert requests == [Request("a", 0, 0, PIECE), Request("a", 1, PIECE, PIECE + 10)]


def test_unknown_members_and_pieces_are_refused() -> None:
    swarm = swarm_of()
    with pytest.raises(KeyError, match="not a source of this transfer"):
        swarm.next_requests("nobody", 0.0)
    swarm.add_source("a", 0.0)
    with pytest.raises(IndexError):
        swarm.piece_done("a", 999, True, PIECE, 0.0)


def measured(swarm: Swarm, member: str, rate: float, start: float) -> float:
    """Ask ``member`` for what it will take and deliver it at ``rate``; answers the time after."""
    now = start
    for request in swarm.next_requests(member, now):
        now += (request.end - request.start) / rate
        swarm.piece_done(member, request.piece, True, request.end - request.start, now)
    return now


def test_in_flight_grows_with_the_measured_rate() -> None:
    swarm = swarm_of(size=256 * MiB)
    swarm.add_source("lan", 0.0)
    swarm.add_source("dsl", 0.0)
    assert len(swarm.next_requests("lan", 0.0)) == PROBE_IN_FLIGHT
    assert len(swarm.next_requests("dsl", 0.0)) == PROBE_IN_FLIGHT
    swarm.piece_done("lan", swarm.in_flight("lan")[0], True, PIECE, 0.001)
    swarm.piece_done("dsl", swarm.in_flight("dsl")[0], True, PIECE, 0.5)
    assert len(swarm.next_requests("lan", 0.5)) + 1 == MAX_IN_FLIGHT
    # 128 KiB/s: two seconds are four pieces; two is the least that hides a round trip.
    assert len(swarm.in_flight("dsl")) + len(swarm.next_requests("dsl", 0.5)) == 4
    check_invariants(swarm)


def test_a_slow_member_leaves_the_last_pieces_to_faster_ones() -> None:
    swarm = swarm_of(size=40 * PIECE)
    for member in ("fast", "slow"):
        swarm.add_source(member, 0.0)
    now = measured(swarm, "fast", 4e6, 0.0)
    slow = swarm.next_requests("slow", now)
    swarm.piece_done("slow", slow[0].piece, True, PIECE, now + 1.0)  # 64 KiB/s
    now += 1.0
    while swarm.next_requests("fast", now):
        pass
    assert sum(1 for p in range(40) if not swarm.is_verified(p) and not swarm.holders(p)) > 0
    # The fast one will fetch what is left before the slow one would finish one more.
    assert swarm.next_requests("slow", now) == []
    check_invariants(swarm)


def test_the_endgame_backs_up_a_slow_piece_once_and_cancels_the_loser() -> None:
    swarm = swarm_of(size=4 * PIECE)
    for member in ("slow", "fast"):
        swarm.add_source(member, 0.0)
    slow = swarm.next_requests("slow", 0.0)
    now = measured(swarm, "fast", 4e6, 0.0)
    # Every missing piece is in flight at slow: fast, idle, takes one of them as a backup.
    backup = swarm.next_requests("fast", now)
    assert len(backup) == 1 and backup[0].piece in {r.piece for r in slow}
    assert swarm.holders(backup[0].piece) == ["slow", "fast"]
    assert swarm.next_requests("fast", now) == []  # one at a time
    cancels = swarm.piece_done("fast", backup[0].piece, True, PIECE, now + 0.02)
    assert cancels == [request for request in slow if request.piece == backup[0].piece]
    assert swarm.in_flight("slow") == [r.piece for r in slow if r.piece != backup[0].piece]
    # The loser's copy lands anyway: counted as duplicate, nothing else changes.
    assert swarm.piece_done("slow", backup[0].piece, True, PIECE, now + 0.5) == []
    assert report(swarm, "slow").duplicate_bytes == PIECE
    assert swarm.bytes_verified == 3 * PIECE
    # The other slow piece gets its backup too; this time the holder wins.
    second = swarm.next_requests("fast", now + 0.5)
    assert [r.piece for r in second] == swarm.in_flight("slow")
    cancels = swarm.piece_done("slow", second[0].piece, True, PIECE, now + 0.6)
    assert cancels == [second[0]]
    assert swarm.complete
    check_invariants(swarm)


def test_no_backup_from_a_member_that_would_not_be_faster() -> None:
    swarm = swarm_of(size=4 * PIECE)
    for member in ("a", "b"):
        swarm.add_source(member, 0.0)
    now = measured(swarm, "a", 1e6, 0.0)
    swarm.next_requests("b", now)
    measured_b = swarm.in_flight("b")
    swarm.piece_done("b", measured_b[0], True, PIECE, now + PIECE / 4e6)
    # b (4 MB/s) holds the last piece and will have it long before a (1 MB/s) could.
    assert swarm.next_requests("a", now + PIECE / 4e6) == []


def test_failures_rest_then_drop_and_a_good_piece_forgives() -> None:
    swarm = swarm_of()
    swarm.add_source("a", 0.0)
    asked = swarm.next_requests("a", 0.0)
    assert swarm.source_failed("a", "connection reset", 1.0) == asked
    assert report(swarm, "a").state == "resting"
    assert swarm.next_retry() == 6.0
    assert swarm.next_requests("a", 5.9) == []
    assert swarm.next_requests("a", 6.0)
    swarm.source_failed("a", "connection reset", 7.0)
    assert swarm.next_requests("a", 36.9) == []
    again = swarm.next_requests("a", 37.0)
    swarm.piece_done("a", again[0].piece, True, PIECE, 37.5)  # forgiven
    swarm.source_failed("a", "connection reset", 38.0)
    assert swarm.next_retry() == 43.0  # the first rest again
    swarm.next_requests("a", 43.0)
    swarm.source_failed("a", "connection reset", 44.0)
    swarm.next_requests("a", 74.0)
    swarm.source_failed("a", "timed out", 75.0)
    gone = report(swarm, "a")
    assert (gone.state, gone.reason) == ("dropped", "timed out (3 times in a row)")
    assert not swarm.usable()
    assert swarm.next_requests("a", 1000.0) == []
    # Seen again in a listing: it may take part again.
    assert swarm.add_source("a", 1000.0)
    assert swarm.next_requests("a", 1000.0)
    check_invariants(swarm)


def test_a_final_failure_drops_at_once_and_a_liar_never_comes_back() -> None:
    swarm = swarm_of()
    for member in ("gone", "liar"):
        swarm.add_source(member, 0.0)
    swarm.next_requests("gone", 0.0)
    swarm.source_failed("gone", "it no longer lists this file", 1.0, final=True)
    assert report(swarm, "gone").reason == "it no longer lists this file"
    assert report(swarm, "gone").state == "dropped"
    lied = swarm.next_requests("liar", 1.0)
    swarm.piece_done("liar", lied[0].piece, False, PIECE, 2.0)
    assert not swarm.add_source("liar", 3.0)
    assert swarm.next_requests("liar", 3.0) == []
    assert swarm.add_source("gone", 3.0)
    # The liar's pieces, given back, are asked again first.
    assert {r.piece for r in swarm.next_requests("gone", 3.0)} == {r.piece for r in lied}


def test_a_lone_member_is_never_stalled_out() -> None:
    swarm = swarm_of()
    swarm.add_source("a", 0.0)
    swarm.next_requests("a", 0.0)
    assert swarm.stalled(10_000.0) == []


def test_stalls_with_a_competitor_first_piece_then_by_rate() -> None:
    swarm = swarm_of()
    for member in ("a", "b", "c"):
        swarm.add_source(member, 0.0)
    asked = swarm.next_requests("a", 0.0)
    assert swarm.stalled(STALL_FIRST) == []
    assert swarm.stalled(STALL_FIRST + 1) == asked
    assert report(swarm, "a").reason == f"stalled: no piece in {STALL_FIRST + 1:.0f} s"
    assert report(swarm, "a").state == "resting"
    # b sends 64 KiB/s: four pieces' time (4 s) is below the floor.
    now = STALL_FIRST + 1
    first, second = swarm.next_requests("b", now)
    swarm.piece_done("b", first.piece, True, PIECE, now + 1.0)
    assert swarm.stalled(now + 1.0 + STALL_FLOOR) == []
    assert swarm.stalled(now + 1.0 + STALL_FLOOR + 0.1) == [second]
    # c sends 4 KiB/s: four pieces' time (64 s) is above it.
    first, second = swarm.next_requests("c", now)
    swarm.piece_done("c", first.piece, True, PIECE, now + 16.0)
    assert swarm.stalled(now + 16.0 + 64.0) == []
    assert swarm.stalled(now + 16.0 + 64.1) == [second]


# -- any order of events ---------------------------------------------------------------------

MEMBERS = ["a", "b", "c", "liar"]
FROM_THE_START = {"a", "b", "liar"}  # c joins with its first "add"
events = st.lists(
    st.tuples(
        # Asking and answering are the common events.
        st.sampled_from(["ask"] * 3 + ["done"] * 3 + ["late", "fail", "stall", "tick", "add"]),
        st.integers(0, len(MEMBERS) - 1),
        st.integers(0, 1 << 20),
    ),
    min_size=10,
    max_size=200,
)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(st.integers(0, 8 * PIECE), st.integers(0, 40 * PIECE)),
    st.sampled_from([16 * KiB, PIECE]),
    st.integers(0, 1000),
    st.sets(st.integers(0, 200), max_size=20),
    events,
)
def test_any_order_of_events_keeps_the_invariants_and_the_honest_finish(
    size: int,
    piece_size: int,
    seed: int,
    done: set[int],
    happenings: list[tuple[str, int, int]],
) -> None:
    count = -(-size // piece_size)
    swarm = Swarm(size, piece_size, random.Random(seed), {p for p in done if p < count})
    initially = {p for p in done if p < count}
    now, added, lied = 0.0, set(FROM_THE_START), False
    for member in sorted(FROM_THE_START):
        swarm.add_source(member, now)
    for kind, who, pick in happenings:
        member = MEMBERS[who]
        if kind == "add":
            assert swarm.add_source(member, now) == (member != "liar" or not lied)
            added.add(member)
        elif member not in added:
            continue
        elif kind == "ask":
            before = {p: swarm.holders(p) for p in range(count)}
            idle = not swarm.in_flight(member)
            for request in swarm.next_requests(member, now):
                assert not swarm.is_verified(request.piece)
                assert request.piece not in initially
                if before[request.piece]:  # the endgame's backup
                    assert idle and len(before[request.piece]) == 1
                    assert all(before[p] for p in range(count) if not swarm.is_verified(p))
            if member == "liar" and lied:
                assert not swarm.in_flight(member)
        elif kind in ("done", "late"):
            held = swarm.in_flight(member)
            if kind == "done" and held:
                piece = held[pick % len(held)]
            elif kind == "late" and count:
                piece = pick % count  # a cancelled request's bytes, landing anyway
            else:
                continue
            ok = member != "liar"
            swarm.piece_done(member, piece, ok, swarm.length(piece), now)
            if not ok:
                lied = True
                assert report(swarm, "liar").state == "dropped"
        elif kind == "fail":
            swarm.source_failed(member, "reset", now, final=pick % 5 == 0)
        elif kind == "stall":
            swarm.stalled(now)
        else:
            now += pick / 10_000  # up to 105 s
        check_invariants(swarm)
        assert swarm.liars() == (["liar"] if lied else [])
    # Whatever happened, honest members (and the liar, lying) finish it.
    swarm.add_source("rescuer", now)
    for _ in range(4 * count + 20):
        if swarm.complete:
            break
        now += 10.0
        for member in [*MEMBERS, "rescuer"]:
            if member in added or member == "rescuer":
                swarm.next_requests(member, now)
                for piece in swarm.in_flight(member):
                    swarm.piece_done(member, piece, member != "liar", swarm.length(piece), now)
                check_invariants(swarm)
    assert swarm.complete
    assert swarm.bytes_verified == size


def test_at_most_max_sources_take_part() -> None:
    swarm = swarm_of()
    assert all(swarm.add_source(f"m{n}", 0.0) for n in range(MAX_SOURCES))
    assert not swarm.add_source("one too many", 0.0)
    assert swarm.add_source("m0", 0.0)  # those in it stay in it


@given(st.integers(0, 64 * MiB), st.sampled_from([16 * KiB, PIECE, 512 * KiB]))
def test_the_pieces_are_laid_out_as_the_merkle_tree_lays_them_out(
    size: int, piece_size: int
) -> None:
    swarm = Swarm(size, piece_size, random.Random(0))
    assert swarm.count == piece_count(size, piece_size)
    for piece in {0, swarm.count // 2, swarm.count - 1} if swarm.count else set():
        assert swarm.range(piece) == piece_range(piece, size, piece_size)


def test_a_busy_member_keeps_what_it_holds_and_is_not_counted_as_failing() -> None:
    swarm = swarm_of(piece_size=MiB, size=64 * MiB)
    swarm.add_source("a", 0.0)
    first = swarm.next_requests("a", 0.0)
    for request in first:
        swarm.piece_done("a", request.piece, True, MiB, 0.05)  # fast: it may hold many
    held = swarm.next_requests("a", 0.1)
    assert len(held) > 4
    # The member gives us 4 slots: the 5th piece and those after it are answered 503.
    for request in held[4:]:
        swarm.source_busy("a", request.piece, 0.2)
    assert report(swarm, "a").state == "active"
    assert swarm.next_requests("a", 0.3) == []  # 4 in flight: no more
    swarm.piece_done("a", held[0].piece, True, MiB, 0.4)
    (one_more,) = swarm.next_requests("a", 0.4)
    assert one_more.piece == held[-1].piece  # what went back is asked again first
    # Every slot taken (by other members): it rests a moment, without a failure.
    for request in [*held[1:4], one_more]:
        swarm.source_busy("a", request.piece, 0.5)
    assert report(swarm, "a").state == "resting"
    assert swarm.next_requests("a", 1.4) == []
    assert len(swarm.next_requests("a", 1.5)) == 1
    check_invariants(swarm)
