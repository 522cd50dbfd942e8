"""Simulated members and a simulated clock that drive p2pd.fetch.swarm.Swarm (tests only).

Each member serves the pieces asked of it one after another at its rate,
after a round trip; it may lie (send damaged pieces), stall (stop sending
after some pieces, connection kept), vanish (disconnect; later connections
refused) or join late.  ``Simulation.run`` drives the swarm as the I/O side
would, checking the swarm's invariants after every event.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from p2pd.fetch.swarm import Request, Swarm

STALL_CHECK_SECONDS = 1.0


@dataclass
class Member:
    id: str
    rate: float
    round_trip: float = 0.02
    lies: Callable[[int], bool] = lambda piece: False
    stall_after: int | None = None
    vanish_at: float | None = None
    join_at: float = 0.0
    joined: bool = False
    vanished: bool = False
    busy_until: float = 0.0
    sent: int = 0


@dataclass
class Asked:
    """One request the simulation made, and what became of it."""

    request: Request
    at: float
    backup: bool
    cancelled: bool = False
    done: bool = False


@dataclass
class Simulation:
    swarm: Swarm
    members: list[Member]
    now: float = 0.0
    asked: list[Asked] = field(default_factory=list)
    verified_at: dict[int, float] = field(default_factory=dict)
    stall_cancels: list[Request] = field(default_factory=list)
    _events: list[tuple[float, int, str, int]] = field(default_factory=list)
    _live: dict[tuple[str, int], Asked] = field(default_factory=dict)

    def member(self, member_id: str) -> Member:
        return next(member for member in self.members if member.id == member_id)

    def run(self, deadline: float = 3600.0) -> None:
        next_stall_check = STALL_CHECK_SECONDS
        while not self.swarm.complete:
            for member in self.members:
                if not member.joined and member.join_at <= self.now:
                    member.joined = True
                    self.swarm.add_source(member.id, self.now)
                vanish_at = member.vanish_at
                if vanish_at is not None and vanish_at <= self.now and not member.vanished:
                    member.vanished = True
                    self.cancel(self.swarm.source_failed(member.id, "reset", self.now))
            self.ask_everyone()
            check_invariants(self.swarm)
            upcoming = [next_stall_check]
            upcoming += [m.join_at for m in self.members if not m.joined]
            upcoming += [m.vanish_at for m in self.members if m.vanish_at and not m.vanished]
            if self._events:
                upcoming.append(self._events[0][0])
            retry = self.swarm.next_retry()
            if retry is not None and retry > self.now:
                upcoming.append(retry)
            self.now = max(self.now, min(upcoming))
            assert self.now < deadline, f"not complete at {deadline} s: {self.swarm.sources()}"
            if self.now >= next_stall_check:
                stalled = self.swarm.stalled(self.now)
                self.stall_cancels += stalled
                self.cancel(stalled)
                next_stall_check = self.now + STALL_CHECK_SECONDS
            while self._events and self._events[0][0] <= self.now:
                _, _, member_id, piece = heapq.heappop(self._events)
                self.deliver(self.member(member_id), piece)

    def ask_everyone(self) -> None:
        for member in self.members:
            if not member.joined:
                continue
            requests = self.swarm.next_requests(member.id, self.now)
            for request in requests:
                self.start(member, request)
            if requests and member.vanished:
                self.cancel(self.swarm.source_failed(member.id, "connection refused", self.now))

    def start(self, member: Member, request: Request) -> None:
        others = [h for h in self.swarm.holders(request.piece) if h != member.id]
        asked = Asked(request, self.now, backup=bool(others))
        if asked.backup:
            # The one exception to one member per piece: an idle member, once every
            # missing piece is in flight.
            assert self.swarm.in_flight(member.id) == [request.piece]
            assert all(
                self.swarm.holders(piece)
                for piece in range(self.swarm.count)
                if not self.swarm.is_verified(piece)
            )
        self.asked.append(asked)
        self._live[(member.id, request.piece)] = asked
        if member.vanished:
            return  # refused: ask_everyone reports it once
        begin = max(self.now + member.round_trip / 2, member.busy_until)
        member.busy_until = begin + (request.end - request.start) / member.rate
        arrival = member.busy_until + member.round_trip / 2
        heapq.heappush(self._events, (arrival, len(self.asked), member.id, request.piece))

    def deliver(self, member: Member, piece: int) -> None:
        if member.stall_after is not None and member.sent >= member.stall_after:
            return  # the connection stays up, nothing more comes
        asked = self._live.pop((member.id, piece), None)
        if asked is None or asked.cancelled or member.vanished:
            return
        asked.done = True
        member.sent += 1
        nbytes = asked.request.end - asked.request.start
        ok = not member.lies(piece)
        was_verified = self.swarm.is_verified(piece)
        self.cancel(self.swarm.piece_done(member.id, piece, ok, nbytes, self.now))
        if ok and not was_verified:
            self.verified_at[piece] = self.now

    def cancel(self, requests: list[Request]) -> None:
        for request in requests:
            asked = self._live.pop((request.source, request.piece), None)
            if asked is not None:
                asked.cancelled = True

    def pieces_from(self, member_id: str) -> int:
        return next(s.pieces for s in self.swarm.sources() if s.id == member_id)

    def asked_of(self, member_id: str) -> list[Asked]:
        return [asked for asked in self.asked if asked.request.source == member_id]


def check_invariants(swarm: Swarm) -> None:
    """What must hold between any two events, whatever happened."""
    verified_bytes = 0
    holding: dict[str, set[int]] = {}
    for piece in range(swarm.count):
        holders = swarm.holders(piece)
        assert len(holders) == len(set(holders)) <= 2, (piece, holders)
        if swarm.is_verified(piece):
            assert not holders, f"verified piece {piece} still asked from {holders}"
            verified_bytes += swarm.length(piece)
        for holder in holders:
            holding.setdefault(holder, set()).add(piece)
    assert swarm.bytes_verified == verified_bytes
    assert swarm.complete == (swarm.pieces_verified == swarm.count)
    backups = sum(1 for piece in range(swarm.count) if len(swarm.holders(piece)) == 2)
    reports = swarm.sources()
    assert backups <= len(reports)
    for report in reports:
        pieces = swarm.in_flight(report.id)
        assert set(pieces) == holding.get(report.id, set())
        assert report.pieces_in_flight == len(pieces)
        assert report.bytes_in_flight == sum(swarm.length(piece) for piece in pieces)
        if report.state != "active":
            assert not pieces, f"{report.id} is {report.state} but holds {pieces}"
        assert report.liar == (report.bad_pieces > 0)
        assert report.rate is None or (report.rate > 0 and math.isfinite(report.rate))
