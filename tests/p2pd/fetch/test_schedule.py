"""p2pd/fetch/schedule.py: which queued transfers start next (pure)."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pd.fetch.schedule import Schedule


@dataclass(eq=False)
class Item:
    name: str
    content: str


def schedule(limit: int = 2) -> Schedule[Item]:
    return Schedule(limit, lambda item: item.content)


def names(items: list[Item]) -> list[str]:
    return [item.name for item in items]


def test_in_order_at_most_limit_at_once() -> None:
    plan = schedule(2)
    items = [Item(str(n), f"c{n}") for n in range(5)]
    for item in items:
        plan.add(item)
    assert names(plan.ready()) == ["0", "1"]
    assert plan.ready() == []
    plan.done(items[1])
    assert names(plan.ready()) == ["2"]
    assert (plan.running, plan.waiting) == (2, 2)


def test_the_same_content_never_runs_twice_at_once_and_waits_first_in_line() -> None:
    plan = schedule(2)
    a1, a2, a3, b, c = (
        Item("a1", "A"),
        Item("a2", "A"),
        Item("a3", "A"),
        Item("b", "B"),
        Item("c", "C"),
    )
    for item in (a1, a2, b, a3, c):
        plan.add(item)
    assert names(plan.ready()) == ["a1", "b"]
    plan.done(b)
    assert names(plan.ready()) == ["c"]  # a2 and a3 wait aside: A is busy
    plan.done(a1)
    plan.done(c)
    assert names(plan.ready()) == ["a2"]  # A's next goes first; a3 must still wait
    plan.done(a2)
    assert names(plan.ready()) == ["a3"]
    assert plan.waiting == 0


def test_a_dropped_item_never_starts_and_does_not_block_its_content() -> None:
    plan = schedule(1)
    a1, a2, a3 = Item("a1", "A"), Item("a2", "A"), Item("a3", "A")
    for item in (a1, a2, a3):
        plan.add(item)
    assert names(plan.ready()) == ["a1"]
    plan.ready()  # nothing: the limit
    plan.drop(a2)
    plan.drop(a2)  # idempotent
    plan.drop(a1)  # already started: not queued, nothing happens
    assert plan.waiting == 1
    plan.done(a1)
    assert names(plan.ready()) == ["a3"]


def test_dropping_one_moved_aside_while_its_content_ends_still_frees_the_next() -> None:
    plan = schedule(2)
    a1, a2, a3, b = Item("a1", "A"), Item("a2", "A"), Item("a3", "A"), Item("b", "B")
    for item in (a1, a2, a3, b):
        plan.add(item)
    assert names(plan.ready()) == ["a1", "b"]
    plan.done(a1)  # A freed; a2 and a3 are aside
    plan.drop(a2)
    assert names(plan.ready()) == ["a3"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("adrx"), st.integers(0, 30)), max_size=200))
def test_every_item_starts_once_unless_dropped_and_contents_never_overlap(
    steps: list[tuple[str, int]],
) -> None:
    plan = schedule(3)
    items: list[Item] = []
    running: list[Item] = []
    started: set[int] = set()
    dropped: set[int] = set()
    for action, n in steps:
        if action == "a":
            items.append(Item(str(len(items)), f"c{n % 4}"))
            plan.add(items[-1])
        elif action == "d" and items:
            item = items[n % len(items)]
            plan.drop(item)
            if id(item) not in started:
                dropped.add(id(item))
        elif action == "x" and running:
            plan.done(running.pop(n % len(running)))
        for item in plan.ready():
            assert id(item) not in started and id(item) not in dropped
            assert item.content not in {r.content for r in running}
            started.add(id(item))
            running.append(item)
        assert len(running) <= 3
    while running or plan.waiting:  # drain: everything queued starts in the end
        assert running, "items wait while nothing runs"
        plan.done(running.pop())
        for item in plan.ready():
            started.add(id(item))
            running.append(item)
    assert started | dropped == {id(item) for item in items}


def test_ten_thousand_of_one_content_cost_linear_time() -> None:
    """A folder of 10 000 empty files: one content, one at a time, no quadratic scan."""
    plan = schedule(8)
    items = [Item(str(n), "empty") for n in range(10_000)]
    started = time.perf_counter()
    for item in items:
        plan.add(item)
    for item in random.Random(1).sample(items[1:], 3000):
        plan.drop(item)
    done = 0
    while batch := plan.ready():
        assert len(batch) == 1
        plan.done(batch[0])
        done += 1
    assert done == 7000
    assert time.perf_counter() - started < 2
