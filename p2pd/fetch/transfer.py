"""One transfer while p2pd runs it: its records, state and progress, its cancel, its end.

The data are the model's (``p2pd.fetch.model``); what makes this the running
transfer is what trio gives it: the event its fetches wait on, and the cancel
scope that ``p2pctl cancel`` cancels.  ``p2pd.fetch.downloads`` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from p2pd.fetch.model import OUTCOME_SOURCE_FIELDS, Outcome, Progress, Queued, State

if TYPE_CHECKING:
    from p2pd.fetch.swarming import Candidate


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
    #: Each member that sent (or was asked for) bytes, by id: what `downloads` and the
    #: history show as ``sources`` (id, name, bytes, bad_pieces, wasted_bytes, liar, …).
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Members the caller found with the same bytes (a search), beside those whose
    #: kept listings name them: candidates for a many-source transfer.
    extra: list[Candidate] = field(default_factory=list)
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

    def source_entry(self, member_id: str, name: str) -> dict[str, Any]:
        """The ``sources`` entry of a member, made on first use."""
        entry = self.sources.get(member_id)
        if entry is None:
            entry = self.sources[member_id] = {
                "id": member_id,
                "name": name,
                "bytes": 0,
                "bad_pieces": 0,
                "wasted_bytes": 0,
                "liar": False,
                "rate": 0,
                "state": "active",
                "reason": None,
            }
        return entry

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
            "sources": [dict(entry) for entry in self.sources.values()],
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
            sources=[
                {key: entry[key] for key in OUTCOME_SOURCE_FIELDS}
                for entry in self.sources.values()
            ],
        )
        return self.outcome
