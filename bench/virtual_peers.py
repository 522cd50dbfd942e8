"""One process of bench/scale.py's load generator: virtual peers on raw sockets.

Each virtual peer is a registry client as p2pd is one: its own certificate
and id, its own TCP connection (kept alive, or one per heartbeat cycle with
``fresh``), signed requests with a fresh nonce each, and a heartbeat at the
interval its last lease answer advised (docs/protocol.md §3.3: the registry
sets the pace, each lease with its own jitter).  Peers heartbeat from the
moment they are registered.  A share of the heartbeats are followed by a
lookup of a member (``GET /members/<id>``, as a p2pd admitting a client or
dialling one), fewer by a resolution (``GET /resolve/<name>``, ``p2pctl ls
NAME``) or a page (``GET /members?certs=0``, ``p2pctl peers``).  A peer's
exchanges are written as a generator ("flow") that yields requests and
receives answers; one epoll loop drives all flows of the process
(bench/peer_conn.py).

The loop obeys commands from the orchestrator on a pipe (see ``Worker.on_command``).
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property, partial
from multiprocessing.connection import Connection as Pipe
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from bench.peer_conn import Conn, EventLoop, Flow, Stats
from bench.scale_wire import interval_of, load_key

#: Registrations in flight per process while setting up.
SETUP_CONCURRENCY = 32
#: Seconds a peer waits before heartbeating when an answer gave no interval.
FALLBACK_INTERVAL = 10.0


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
    conn: Conn | None = None
    #: The lease token of its last register (docs/protocol.md §3.3).
    lease: str = ""
    #: The interval its last lease answer advised.
    interval: float = FALLBACK_INTERVAL

    @property
    def member_body(self) -> bytes:
        return json.dumps({"id": self.id, "lease": self.lease}, separators=(",", ":")).encode()

    @cached_property
    def register_body(self) -> bytes:
        fields = {"id": self.id, "name": f"vpeer-{self.index}", "cert": self.cert, "port": 7070}
        return json.dumps(fields, separators=(",", ":")).encode()


@dataclass
class Mix:
    """What follows a heartbeat, as shares of the heartbeats."""

    lookups: float = 0.0
    resolves: float = 0.0
    pages: float = 0.0


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
        self.mix = Mix()
        self.rng = random.Random(index)
        self.members: list[Peer] = []  # joined, oldest first: who leaves next
        self.setup: dict[str, Any] = {"ok": 0, "failed": 0, "interval": 0.0}
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
        peer.interval = float(lease["heartbeat_interval"])
        peer.active = True
        self.members.append(peer)
        now = time.monotonic()
        if joining:
            self.stats.counts["joins"] += self.stats.inside(now)
        else:
            self.setup["ok"] += 1
            self.setup["interval"] = peer.interval
        # Heartbeats from the moment it is a member, at the advised interval.
        self.at(now + peer.interval, partial(self.beat, peer, now + peer.interval))

    def beat_flow(self, peer: Peer, due: float) -> Flow:
        answer = yield ("heartbeat", "POST", "/heartbeat", peer.member_body)
        if answer is not None and answer.status in (403, 404):
            answer = yield ("register", "POST", "/register", peer.register_body)
            if answer is not None and answer.status == 200:
                peer.lease = json.loads(answer.body)["lease"]
        if answer is not None and answer.status == 200:
            peer.interval = interval_of(answer.body) or peer.interval
        self.at(due + peer.interval, partial(self.beat, peer, due + peer.interval))
        if answer is None or answer.status != 200:
            return
        draw = self.rng.random()
        mix = self.mix
        if draw < mix.lookups and self.members:
            other = self.rng.choice(self.members)
            yield ("lookup", "GET", f"/members/{other.id}", b"")
        elif draw < mix.lookups + mix.resolves and self.members:
            other = self.rng.choice(self.members)
            yield ("resolve", "GET", f"/resolve/vpeer-{other.index}", b"")
        elif draw < mix.lookups + mix.resolves + mix.pages:
            yield ("page", "GET", "/members?limit=1000&certs=0", b"")

    def leave_flow(self, peer: Peer) -> Flow:
        answer = yield ("leave", "POST", "/leave", peer.member_body)
        if answer is not None and answer.status == 200:
            self.stats.counts["leaves"] += self.stats.inside(time.monotonic())

    def hammer_flow(self, requests: Flow, until: float) -> Flow:
        """The requests of ``requests``, each answer passed back to it (a churn's register
        answers the lease its next leave shows)."""
        answer = None
        while time.monotonic() < until:
            try:
                request = requests.send(answer)
            except StopIteration:
                return
            answer = yield request

    def hammer_requests(self, kind: str, peers: list[Peer]) -> Flow:
        """Endless requests of one kind for the saturation phases, over ``peers``."""
        if kind == "list":
            while True:
                yield ("list", "GET", "/clients", b"")
        if kind == "page":
            while True:
                yield ("page", "GET", "/members?limit=1000&certs=0", b"")
        everyone = self.members or peers
        for peer in itertools.cycle(peers):
            if kind == "heartbeat":
                yield ("heartbeat", "POST", "/heartbeat", peer.member_body)
            elif kind == "lookup":
                other = self.rng.choice(everyone)
                yield ("lookup", "GET", f"/members/{other.id}", b"")
            elif kind == "resolve":
                other = self.rng.choice(everyone)
                yield ("resolve", "GET", f"/resolve/vpeer-{other.index}", b"")
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
        conn = self.conn_of(peer)
        if conn.busy:
            self.stats.counts["beats skipped: previous cycle still running"] += 1
            self.at(due + peer.interval, partial(self.beat, peer, due + peer.interval))
            return
        if self.stats.inside(now):
            self.stats.lag.append(now - due)
        conn.run(self.beat_flow(peer, due))

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
        """The measuring window, churn and the lookups' mix (beats run since registration)."""
        self.paused = False
        self.mix = Mix(**args["mix"])
        self.stats = Stats(*args["window"])
        start = args["start"]
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
            requests = self.hammer_requests(kind, members[number::count])
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
