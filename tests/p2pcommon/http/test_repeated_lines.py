"""Log lines that repeat fast: the first, then one summary a minute (fake clock)."""

from __future__ import annotations

import logging

import pytest

from p2pcommon.http.fdlimit import FEWEST, connection_bound
from p2pcommon.logs import RepeatedLines


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_repeated_line_is_logged_once_then_summed_up(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "test.repeats")
    clock = Clock()
    lines = RepeatedLines(logging.getLogger("test.repeats"), clock=clock)
    for tenth in range(600):  # ten a second for a minute
        clock.now = tenth / 10
        lines.log(logging.ERROR, "accept failed", "cannot accept: %s", "EMFILE")
    clock.now = 60.0
    lines.log(logging.ERROR, "accept failed", "cannot accept: %s", "EMFILE")
    assert [r.getMessage() for r in caplog.records] == [
        "cannot accept: EMFILE",
        "accept failed: 599 more like this in the last minute",
        "cannot accept: EMFILE",
    ]
    # Another kind is counted apart; a window that is over is summed up by flush().
    lines.log(logging.WARNING, "other", "other line")
    lines.log(logging.WARNING, "other", "other line")
    clock.now += 61
    lines.flush()
    assert caplog.records[-1].getMessage() == "other: 1 more like this in the last minute"
    lines.flush()
    assert len(caplog.records) == 5


def test_the_connection_bound_fits_under_the_file_limit(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "p2pcommon.fdlimit")
    assert connection_bound(1024, 256, limit=8192) == 1024
    assert caplog.records == []
    assert connection_bound(1024, 256, limit=1024) == 768
    assert "only 1024 file descriptors" in caplog.records[-1].getMessage()
    assert connection_bound(1024, 256, limit=100) == FEWEST
