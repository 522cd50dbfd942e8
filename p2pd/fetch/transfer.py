"""One transfer while p2pd runs it: its records, state and progress, its cancel, its end.

The data are the model's (``p2pd.fetch.model``); what makes this the running
transfer is what trio gives it: the event its fetches wait on, and the cancel
scope that ``p2pctl cancel`` cancels.  ``p2pd.fetch.downloads`` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from p2pd.fetch.model import Outcome, Progress, Queued, State


@dataclass
class Transfer:
    """One transfer as the control socket shows it; ``p2pd.fetch.downloads`` runs it."""

    queued: Queued
    dest: Path
    progress: Progress
    #: The member of the current (last) attempt: not always the one asked first.
    peer_id: str = ""
    peer_name: str = ""
    done: trio.Event = field(default_factory=trio.Event)
    outcome: Outcome | None = None
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    #: What another fetch joins: the same bytes asked for at the same destination.
    key: tuple[str, Path] | None = None
    _state: State = field(default=State.QUEUED, init=False, repr=False)

    @property
    def state(self) -> State:
        return self._state

    @state.setter
    def state(self, new: State) -> None:
        """Only the moves of ``p2pd.fetch.model.MOVES``: IllegalMove for another."""
        self._state = self._state.to(new)

    @property
    def shown_state(self) -> State:
        """``cancelling`` from the cancel on, whatever the task still sets meanwhile."""
        if self.cancel_scope.cancel_called and self.state.joinable:
            return State.CANCELLING
        return self.state

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.queued.id,
            "path": str(self.dest),
            "remote_path": self.queued.remote_path,
            "peer_id": self.peer_id or self.queued.peer_id,
            "size": self.queued.size,
            "bytes_done": self.progress.bytes_done,
            "state": self.shown_state.value,
            "rate": round(self.progress.rate),
        }

    def end(
        self,
        status: str,
        error: str | None,
        finished: float,
        *,
        recorded: bool,
        already_there: bool = False,
    ) -> Outcome:
        """Take the last state and the outcome (``status``: ok, failed or cancelled)."""
        queued = self.queued
        elapsed = max(finished - queued.started_at, 1e-6)
        self.state = State.ended(status)
        self.outcome = Outcome(
            id=queued.id,
            path=str(self.dest),
            remote_path=queued.remote_path,
            peer_id=self.peer_id or queued.peer_id,
            peer_name=self.peer_name or queued.peer_name,
            sha256=queued.sha256,
            size=queued.size,
            status=status,
            error=error,
            started_at=queued.started_at,
            finished_at=finished,
            bytes_per_second=self.progress.bytes_done / elapsed if recorded else 0.0,
            already_there=already_there,
        )
        return self.outcome
