"""bench/scale.py's hostile generator (``--hostile``): issue 22's two attackers.

A process of its own, so that its work does not delay the virtual peers' loops
(whose heartbeats are the bystanders measured).  During the measuring window:

- **identity churn**: a member registers a new self-signed identity (proven by
  its key, as any register) and drops it with its lease at once, 1 000 a minute,
  spread over 20 source addresses (``--identities``) (the registry gives each address a budget of
  new ids: docs/protocol.md §3.2);
- **a lookup flood**: lookups of random unknown ids from one address on 16
  kept-alive connections, each request signed anew, paced at ``--flood-rate``
  (default 1 000/s; 0: none; ten times an address's lookup budget): a loop without pause
  would mostly measure the attacker's own CPU, which on a small machine is the
  registry's too.

Its requests are counted under their own kinds (``h-register``, ``h-leave``,
``h-lookup``), out of the peers' bytes and failures.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from typing import Any

from bench.peer_conn import Conn, Flow, Stats
from bench.virtual_peers import Peer, Worker

#: Addresses the identity churn comes from, and connections the flood keeps.
CHURN_SOURCES = 20
FLOOD_CONNECTIONS = 16

_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


def unknown_id() -> str:
    """A well-formed id that no member has (52 characters of [a-z2-7])."""
    return "".join(_BASE32[b % 32] for b in secrets.token_bytes(52))


@dataclass
class HostileCounts:
    identities: int = 0
    first: float = 0.0
    last: float = 0.0

    def per_minute(self) -> float:
        span = self.last - self.first
        return 60 * (self.identities - 1) / span if self.identities > 1 and span > 0 else 0.0


class HostileWorker(Worker):
    def __init__(
        self,
        index: int,
        secret: str,
        registries: list[tuple[str, int]],
        identities: list[tuple[int, str, str]],
        pipe: Pipe,
        key_pem: bytes,
        flood_rate: float,
        identities_per_minute: float,
    ) -> None:
        super().__init__(index, secret, registries, [], identities, pipe, key_pem)
        self.flood_rate = flood_rate
        self.identities_per_minute = identities_per_minute
        self.churned = HostileCounts()
        self.flood: list[Conn] = []
        self._next_source = 0

    def on_command(self, command: tuple[str, dict[str, Any]]) -> None:
        name, args = command
        if name == "run":
            self._hostile(args)
        elif name in ("register", "quiesce", "stop"):
            super().on_command(command)
            # Its flood keeps its connections alive, whatever the peers do.
            self.fresh = False
        else:
            raise SystemExit(f"scale: the hostile generator has no {name!r} phase")

    def _hostile(self, args: dict[str, Any]) -> None:
        self.paused = False
        self.stats = Stats(*args["window"])
        start = self.stats.start
        self.flood = [Conn(self, "127.8.0.1", 0) for _ in range(FLOOD_CONNECTIONS)]
        self.every(self.identities_per_minute / 60, self.churn_one, start)
        self.every(self.flood_rate, self.flood_one, start)
        self.at(self.stats.end, self._stop_hostile)
        self.at(self.stats.end + 0.05, self._report)

    def _stop_hostile(self) -> None:
        self.paused = True

    def churn_one(self) -> None:
        if not self.spares:
            self.stats.counts["h-identities skipped: no certificate left"] += 1
            return
        peer = self.spares.pop()
        source = f"127.7.0.{self._next_source % CHURN_SOURCES + 1}"
        self._next_source += 1
        conn = Conn(self, source, 0)
        conn.run(self.identity_flow(peer), on_done=conn.close)

    def identity_flow(self, peer: Peer) -> Flow:
        body = json.dumps(
            {"id": peer.id, "name": f"churn-{peer.index}", "cert": peer.cert, "port": 9},
            separators=(",", ":"),
        ).encode()
        answer = yield ("h-register", "POST", "/register", body)
        if answer is None or answer.status != 200:
            return
        peer.lease = json.loads(answer.body)["lease"]
        answer = yield ("h-leave", "POST", "/leave", peer.member_body)
        if answer is not None and answer.status == 200:
            now = time.monotonic()
            if self.stats.inside(now):
                self.churned.first = self.churned.first or now
                self.churned.last = now
                self.churned.identities += 1

    def flood_one(self) -> None:
        for conn in self.flood:
            if not conn.busy:
                conn.run(self.lookup_flow())
                return
        self.stats.counts["h-lookups not sent: every flood connection busy"] += 1

    @staticmethod
    def lookup_flow() -> Flow:
        yield ("h-lookup", "GET", f"/members/{unknown_id()}", b"")

    def _report(self) -> None:
        for conn in self.flood:
            conn.close()
        report = self.stats.as_dict()
        report["counts"]["h-identities per minute"] = round(self.churned.per_minute())
        self.pipe.send(("report", report))


def hostile_main(
    index: int,
    secret: str,
    registries: list[tuple[str, int]],
    identities: list[tuple[int, str, str]],
    pipe: Pipe,
    key_pem: bytes,
    flood_rate: float,
    identities_per_minute: float,
) -> None:
    worker = HostileWorker(
        index, secret, registries, identities, pipe, key_pem, flood_rate, identities_per_minute
    )
    worker.loop()
