"""One process of bench/scale.py's load generator: virtual peers on raw sockets.

Each virtual peer is a registry client as p2pd is one: its own certificate
and id, its own TCP connection (kept alive, or one per heartbeat cycle with
``fresh``), signed requests with a fresh nonce each, a heartbeat at the
interval the registry advises, and the membership sync of docs/protocol.md
(``GET /clients?since=V`` only when the heartbeat's ``version`` differs from
its cursor).  A peer's exchanges are written as a generator ("flow") that
yields requests and receives answers; one epoll loop drives all flows of the
process (bench/peer_conn.py).  Peers keep only their cursor: applying
deltas is p2pd's cost, measured on real daemons, not the generator's.

The loop obeys commands from the orchestrator on a pipe (see ``Worker.on_command``).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property, partial
from multiprocessing.connection import Connection as Pipe
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from bench.peer_conn import Conn, EventLoop, Flow, Request, Stats
from bench.scale_wire import load_key, sync_fields

#: Registrations in flight per process while setting up.
SETUP_CONCURRENCY = 32


def source_address(index: int) -> str:
    """A loopback address per virtual peer, so that the registry sees distinct hosts
    (its per-address bounds would otherwise refuse or evict them as one host's)."""
    return f"127.{10 + index // 62500}.{index // 250 % 250 + 1}.{index % 250 + 1}"


@dataclass(eq=False)
class Peer:
    index: int
    id: str
    cert: str
    registry: int
    active: bool = False
    cursor: int | None = None
    conn: Conn | None = None
    #: The lease token of its last register (docs/protocol.md §3.3).
    lease: str = ""

    @property
    def member_body(self) -> bytes:
        return json.dumps({"id": self.id, "lease": self.lease}, separators=(",", ":")).encode()

    @cached_property
    def register_body(self) -> bytes:
        fields = {"id": self.id, "name": f"vpeer-{self.index}", "cert": self.cert, "port": 7070}
        return json.dumps(fields, separators=(",", ":")).encode()


class Worker(EventLoop):
    def __init__(
        self,
        index: int,
        secret: str,
        registries: list[tuple[str, int]],
        peers: list[tuple[int, str, str]],
        spares: list[tuple[int, str, str]],
        pipe: Pipe,
        key_pem: bytes,
    ) -> None:
        super().__init__(secret, registries, pipe)
        self.member_key: ec.EllipticCurvePrivateKey | None = load_key(key_pem)
        self.index = index
        count = len(registries)
        self.peers = [Peer(i, pid, pem, i % count) for i, pid, pem in peers]
        self.spares = [Peer(i, pid, pem, i % count) for i, pid, pem in spares]
        self.interval = 0.0
        self.sync = "delta"
        self.joiner_sync = True
        self.members: list[Peer] = []  # joined, oldest first: who leaves next
        self.setup: dict[str, Any] = {"ok": 0, "failed": 0, "interval": 0.0, "version": None}
        self._setup_pending = 0
        #: Beats and churn stopped; "quiet" is sent once nothing is in flight.
        self.paused = False
        self._quiet_wanted = False

    def conn_of(self, peer: Peer) -> Conn:
        if peer.conn is None:
            peer.conn = Conn(self, source_address(peer.index), peer.registry)
        return peer.conn

    # -- flows ----------------------------------------------------------------

    def register_flow(self, peer: Peer, *, joining: bool) -> Flow:
        answer = yield ("register", "POST", "/register", peer.register_body)
        if answer is None or answer.status != 200:
            self.setup["failed"] += not joining
            return
        lease = json.loads(answer.body)
        peer.lease = lease["lease"]
        if not joining:
            self.setup["ok"] += 1
            self.setup["interval"] = float(lease["heartbeat_interval"])
            self.setup["version"] = lease.get("version")
            peer.active = True
            self.members.append(peer)
            return
        now = time.monotonic()
        self.stats.counts["joins"] += self.stats.inside(now)
        peer.active = True
        self.members.append(peer)
        self.at(now + self.interval, partial(self.beat, peer, now + self.interval))
        if self.joiner_sync and self.sync != "none":
            # A new p2pd has no cursor: it asks since=0, the full list (maybe a snapshot).
            answer = yield ("join-list", "GET", "/clients?since=0", b"")
            if answer is not None and answer.status == 200:
                peer.cursor = sync_fields(answer.body)[0]

    def beat_flow(self, peer: Peer) -> Flow:
        answer = yield ("heartbeat", "POST", "/heartbeat", peer.member_body)
        if answer is not None and answer.status in (403, 404):
            answer = yield ("register", "POST", "/register", peer.register_body)
            if answer is not None and answer.status == 200:
                peer.lease = json.loads(answer.body)["lease"]
        if answer is None or answer.status != 200 or self.sync == "none":
            return
        if self.sync == "legacy":
            # What p2pd did before membership versions: the whole list every time.
            yield ("list", "GET", "/clients", b"")
            return
        version = json.loads(answer.body).get("version")
        if version is None or version == peer.cursor:
            return
        if peer.cursor is None:
            answer = yield ("join-list", "GET", "/clients?since=0", b"")
        else:
            answer = yield ("delta", "GET", f"/clients?since={peer.cursor}", b"")
        if answer is None or answer.status != 200:
            return
        new, since, full = sync_fields(answer.body)
        if peer.cursor is not None and since != peer.cursor:
            self.stats.counts["delta: since not echoed"] += 1
            return
        if full and peer.cursor is not None and self.stats.inside(time.monotonic()):
            self.stats.counts["delta answered with the full list"] += 1
        peer.cursor = new

    def leave_flow(self, peer: Peer) -> Flow:
        answer = yield ("leave", "POST", "/leave", peer.member_body)
        if answer is not None and answer.status == 200:
            self.stats.counts["leaves"] += self.stats.inside(time.monotonic())

    def hammer_flow(self, requests: Iterator[Request], until: float) -> Flow:
        while time.monotonic() < until:
            request = next(requests, None)
            if request is None:
                return
            yield request

    def hammer_requests(self, kind: str, since: int | None, peers: list[Peer]) -> Iterator[Request]:
        """Endless requests of one kind for the saturation phases, over ``peers``."""
        if kind in ("delta", "list"):
            target = "/clients" if kind == "list" else f"/clients?since={since}"
            while True:
                yield (kind, "GET", target, b"")
        for peer in itertools.cycle(peers):
            if kind == "heartbeat":
                yield ("heartbeat", "POST", "/heartbeat", peer.member_body)
            elif kind == "churn":
                # Two membership changes: a leave, then the same member joins again.
                yield ("leave", "POST", "/leave", peer.member_body)
                answer = yield ("register", "POST", "/register", peer.register_body)
                if answer is not None and answer.status == 200:
                    peer.lease = json.loads(answer.body)["lease"]

    # -- schedules ------------------------------------------------------------

    def beat(self, peer: Peer, due: float) -> None:
        if not peer.active or self.paused:
            return
        now = time.monotonic()
        self.at(due + self.interval, partial(self.beat, peer, due + self.interval))
        conn = self.conn_of(peer)
        if conn.busy:
            self.stats.counts["beats skipped: previous cycle still running"] += 1
            return
        if self.stats.inside(now):
            self.stats.lag.append(now - due)
        conn.run(self.beat_flow(peer))

    def join_one(self) -> None:
        if not self.spares:
            self.stats.counts["joins skipped: no spare certificate left"] += 1
            return
        peer = self.spares.pop()
        self.conn_of(peer).run(self.register_flow(peer, joining=True))

    def leave_one(self) -> None:
        for position, peer in enumerate(self.members):
            if peer.active and not self.conn_of(peer).busy:
                del self.members[position]
                peer.active = False
                conn = self.conn_of(peer)
                conn.run(self.leave_flow(peer), on_done=conn.close)
                return

    def every(self, rate: float, action: Callable[[], None], start: float) -> None:
        if rate <= 0:
            return
        period = 1 / rate

        def tick(when: float) -> None:
            if self.paused:
                return
            action()
            self.at(when + period, partial(tick, when + period))

        self.at(start, partial(tick, start))

    # -- commands ---------------------------------------------------------------

    def on_command(self, command: tuple[str, dict[str, Any]]) -> None:
        name, args = command
        if name == "register":
            self.fresh = bool(args.get("fresh", False))
            self._setup_pending = len(self.peers)
            if not self.peers:
                self.pipe.send(("registered", self.setup))
            queue = iter(self.peers)
            for _ in range(SETUP_CONCURRENCY):
                self._register_next(queue)
        elif name == "run":
            self._run(args)
        elif name == "hammer":
            self._hammer(args)
        elif name == "quiesce":
            self.paused = self._quiet_wanted = True
        elif name == "stop":
            self.stopping = True

    def _register_next(self, queue: Iterator[Peer]) -> None:
        peer = next(queue, None)
        if peer is not None:
            self.conn_of(peer).run(
                self.register_flow(peer, joining=False), on_done=partial(self._registered, queue)
            )

    def _registered(self, queue: Iterator[Peer]) -> None:
        self._setup_pending -= 1
        if self._setup_pending == 0:
            self.pipe.send(("registered", self.setup))
        self._register_next(queue)

    def _run(self, args: dict[str, Any]) -> None:
        self.paused = False
        self.sync = args["sync"]
        self.joiner_sync = args["joiner_sync"]
        self.interval = args["interval"]
        self.stats = Stats(*args["window"])
        for peer in self.peers:
            peer.cursor = args["cursor"]
        start, total = args["start"], args["total"]
        for peer in self.peers:
            due = start + self.interval * (peer.index % total) / total
            self.at(due, partial(self.beat, peer, due))
        self.every(args["joins"], self.join_one, start)
        self.every(args["leaves"], self.leave_one, start + 0.5 / max(args["leaves"], 1e-9))
        self.at(self.stats.end + 0.05, self._report)

    def _hammer(self, args: dict[str, Any]) -> None:
        self.paused = False
        # Steady beats stop; their connections go, as the registry would evict them.
        for peer in self.peers + self.members:
            peer.active = False
            if peer.conn is not None and not peer.conn.busy:
                peer.conn.close()
        # Who is registered now: the steady peers that did not leave, and the joiners.
        members = self.members
        kind, count = args["kind"], args["connections"]
        kinds = {"leave", "register"} if kind == "churn" else {kind}
        start, end = args["window"]
        self.stats = Stats(start, end, latency_kinds=kinds)
        for number in range(count):
            # Each connection its own peers: a member's leave and its new
            # register must not race on two connections.
            requests = self.hammer_requests(kind, args.get("since"), members[number::count])
            index = self.index * 1000 + number
            source = f"127.9.{index // 250 + 1}.{index % 250 + 1}"
            # Saturation may aim at some registries only (one of two, to compare).
            targets = args.get("registries") or list(range(len(self.registries)))
            conn = Conn(self, source, targets[number % len(targets)])
            conn.run(self.hammer_flow(requests, self.stats.end), on_done=conn.close)
        self.at(self.stats.end + 0.05, self._report)

    def _report(self) -> None:
        self.pipe.send(("report", self.stats.as_dict()))

    def tick(self) -> None:
        if self._quiet_wanted and not self.busy:
            self._quiet_wanted = False
            for peer in self.peers + self.members:
                if peer.conn is not None:
                    peer.conn.close()
            self.pipe.send(("quiet", {}))


def worker_main(
    index: int,
    secret: str,
    registries: list[tuple[str, int]],
    peers: list[tuple[int, str, str]],
    spares: list[tuple[int, str, str]],
    pipe: Pipe,
    key_pem: bytes,
) -> None:
    Worker(index, secret, registries, peers, spares, pipe, key_pem).loop()
