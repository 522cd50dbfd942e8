"""The container's waits themselves: they must outlast a busy machine, not read once."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.system.container import Container


class Scripted(Container):
    """A container whose `systemctl is-system-running` answers from a script."""

    def __init__(self, answers: list[str]) -> None:
        super().__init__(Path("/nonexistent"), {})
        self.answers = answers
        self.asked = 0

    def run(self, *command: str, **options: Any) -> subprocess.CompletedProcess[str]:
        assert command[:2] == ("systemctl", "is-system-running")
        self.asked += 1
        answer = self.answers.pop(0) if self.answers else ""
        return subprocess.CompletedProcess(list(command), 1, stdout=answer + "\n", stderr="")

    def console(self) -> str:
        return "(console)"


def test_no_answer_yet_is_asked_again_until_a_real_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "sleep", lambda _: None)
    # What a container's systemctl says while PID 1 and the bus are not up yet.
    box = Scripted(["", "offline", "unknown", "starting", "running"])
    assert box.system_state(time.monotonic() + 60) == "running"
    assert box.asked == 5
    assert Scripted(["", "degraded"]).system_state(time.monotonic() + 60) == "degraded"
    # A real state that is not a booted one is final: no waiting for it to change.
    assert Scripted(["maintenance", "running"]).system_state(time.monotonic() + 60) == "maintenance"


def test_a_silent_container_fails_at_the_deadline_naming_the_last_answer() -> None:
    box = Scripted([])
    with pytest.raises(RuntimeError, match="gave no state in time \\(last answer ''\\)"):
        box.system_state(time.monotonic() + 1.2)
    assert box.asked >= 2


def test_wait_for_polls_until_true_and_names_what_timed_out() -> None:
    box = Scripted([])
    calls = iter([False, False, True])
    box.wait_for("the third try", lambda: next(calls), timeout=10)
    with pytest.raises(AssertionError, match="timed out after 0.3 s waiting for never"):
        box.wait_for("never", lambda: False, timeout=0.3)
