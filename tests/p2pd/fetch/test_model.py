"""p2pd/fetch/model.py: a transfer's states move only as their one table says (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pd.fetch.model import MOVES, IllegalMove, Progress, Queued, State
from p2pd.fetch.transfer import Transfer

S = State

#: The ways a transfer goes in practice, each step one the daemon takes.
LIVES = {
    "a file fetched": [S.CONNECTING, S.DOWNLOADING, S.PLACING, S.DONE],
    "already at its destination": [S.DONE],
    "resumed with every byte on disk": [S.CONNECTING, S.PLACING, S.DONE],
    "a failed member, then another": [S.CONNECTING, S.CONNECTING, S.DOWNLOADING, S.PLACING],
    "bytes that did not verify, then a wait": [
        S.CONNECTING,
        S.DOWNLOADING,
        S.PLACING,
        S.CONNECTING,
        S.WAITING,
        S.CONNECTING,
    ],
    "no member to ask, round after round": [S.WAITING, S.WAITING, S.FAILED],
    "an unsafe queued record": [S.FAILED],
    "given up mid-download": [S.CONNECTING, S.DOWNLOADING, S.WAITING, S.FAILED],
    "cancelled while it waited its turn": [S.CANCELLING, S.CANCELLED],
    "cancelled as its task passed a shielded step": [
        S.CONNECTING,
        S.CANCELLING,
        S.DOWNLOADING,
        S.CANCELLED,
    ],
    # The placing thread finishes whatever happens: the bytes are in place, it is ok.
    "cancelled as its file was being placed": [S.CONNECTING, S.PLACING, S.CANCELLING, S.DONE],
}


#: A way to each state from a new transfer's.
WAY_TO = {
    S.QUEUED: [],
    S.CONNECTING: [S.CONNECTING],
    S.DOWNLOADING: [S.CONNECTING, S.DOWNLOADING],
    S.WAITING: [S.WAITING],
    S.PLACING: [S.CONNECTING, S.PLACING],
    S.CANCELLING: [S.CANCELLING],
    S.DONE: [S.DONE],
    S.FAILED: [S.FAILED],
    S.CANCELLED: [S.CANCELLING, S.CANCELLED],
}


def transfer_in(state: State = S.QUEUED) -> Transfer:
    queued = Queued("0badcafe", "b" * 52, "bob", "a.txt", "ab" * 32, 3, 1.0)
    moving = Transfer(queued, Path("/downloads/a.txt"), Progress(3))
    for step in WAY_TO[state]:
        moving.state = step
    assert moving.state is state
    return moving


@pytest.mark.parametrize("life", list(LIVES.values()), ids=list(LIVES))
async def test_every_way_a_transfer_goes_is_a_way_the_table_allows(life: list[State]) -> None:
    moving = transfer_in(S.QUEUED)
    for step in life:
        moving.state = step
        assert moving.state is step


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (S.QUEUED, S.PLACING),  # placing comes after an attempt began
        (S.QUEUED, S.DOWNLOADING),
        (S.WAITING, S.DONE),  # success only through placing
        (S.CONNECTING, S.DONE),
        (S.DONE, S.CONNECTING),  # an outcome is the last word
        (S.FAILED, S.CANCELLING),
        (S.CANCELLED, S.DONE),
        (S.CANCELLING, S.CANCELLING),
        (S.CANCELLING, S.QUEUED),
    ],
)
async def test_a_move_the_table_lacks_is_refused_and_the_state_kept(
    before: State, after: State
) -> None:
    with pytest.raises(IllegalMove, match=f"from {before.value} to {after.value}"):
        before.to(after)
    moving = transfer_in(before)
    with pytest.raises(IllegalMove):
        moving.state = after
    assert moving.state is before
    assert moving.to_json()["state"] == before.value


def test_nothing_leads_back_to_queued_nor_out_of_an_outcome() -> None:
    assert all(S.QUEUED not in moves for moves in MOVES.values())
    assert {s for s in State if s.finished} == {S.DONE, S.FAILED, S.CANCELLED}
    assert set(MOVES) == set(State)


def test_from_every_state_an_outcome_can_be_reached() -> None:
    for start in State:
        seen, frontier = {start}, [start]
        while frontier:
            for following in MOVES[frontier.pop()]:
                if following not in seen:
                    seen.add(following)
                    frontier.append(following)
        assert seen & {S.DONE, S.FAILED, S.CANCELLED}, start
