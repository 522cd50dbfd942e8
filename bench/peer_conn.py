"""The transport of bench/scale.py's virtual peers: one epoll loop, raw sockets, flows.

A flow is a generator that yields requests and receives their answers (None
when the exchange failed: a timeout, a broken connection); a ``Conn`` runs
one flow at a time over its TCP connection, signing each request as it is
sent, and reconnects when the server closed the connection.  ``EventLoop``
drives every connection of one generator process and obeys the orchestrator's
commands on a pipe.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import json
import select
import socket
import time
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from bench.scale_wire import Answer, AnswerReader, FastSigner, ProtocolError
from p2pcommon.signing.signer import AuthError, Signer

#: p2pd's registry client gives up on an exchange after this long (its timeout).
REQUEST_TIMEOUT = 5.0
#: Every this many answers one is verified with the project's Signer.
VERIFY_EVERY = 97

#: (kind, method, target, body): kind names the traffic in the statistics.
Request = tuple[str, str, str, bytes]
Flow = Generator[Request, Answer | None, None]


@dataclass
class Stats:
    """What completed inside the measuring window [start, end] (monotonic seconds)."""

    start: float = float("inf")
    end: float = float("-inf")
    counts: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)
    latency: list[float] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)
    #: Seconds from connect() to the connection being established.
    connect: list[float] = field(default_factory=list)
    #: Whose latency is kept: heartbeats, or whatever a saturation phase sends.
    latency_kinds: set[str] = field(default_factory=lambda: {"heartbeat"})

    def inside(self, now: float) -> bool:
        return self.start <= now <= self.end

    def as_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "bytes": dict(self.bytes),
            "latency": self.latency,
            "lag": self.lag,
            "connect": self.connect,
        }


class Conn:
    """One TCP connection of one flow at a time; reconnects when the server closed it."""

    def __init__(self, owner: EventLoop, source: str, registry: int) -> None:
        self.owner = owner
        self.source = source
        self.registry = registry
        self.sock: socket.socket | None = None
        self.mask = 0
        self.connected = False
        self.used = False
        self.reader = AnswerReader()
        self.flow: Flow | None = None
        self.request: Request | None = None
        self.out = b""
        self.nonce = ""
        self.started = 0.0
        self.connect_started = 0.0
        self.deadline = 0.0
        self.retried = False
        self.on_done: Callable[[], None] | None = None

    @property
    def busy(self) -> bool:
        return self.flow is not None

    def run(self, flow: Flow, on_done: Callable[[], None] | None = None) -> None:
        self.flow, self.on_done = flow, on_done
        self.retried = False
        self._advance(None, first=True)

    def _advance(self, answer: Answer | None, first: bool = False) -> None:
        assert self.flow is not None
        try:
            request = next(self.flow) if first else self.flow.send(answer)
        except StopIteration:
            self.flow, done, self.on_done = None, self.on_done, None
            if self.owner.fresh:
                self.close()
            if done is not None:
                done()
            return
        self.request = request
        self.retried = False
        self._issue()

    def _issue(self) -> None:
        assert self.request is not None
        kind, method, target, body = self.request
        now = time.monotonic()
        self.started = now
        self.deadline = now + REQUEST_TIMEOUT
        self.owner.busy.add(self)
        host, port = self.owner.registries[self.registry]
        member = None
        if target == "/register" and self.owner.member_key is not None:
            # The virtual peers share one key (bench/scale_wire.py): prove it for this id.
            member = (json.loads(body)["id"], self.owner.member_key)
        data, self.nonce = self.owner.signer.request(
            method, target, body, host, time.time(), member
        )
        self.out = data
        if self.sock is None:
            self._connect(host, port)
        elif self.connected:
            self._send()

    def _connect(self, host: str, port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):  # unbindable: any loopback address will do
            sock.bind((self.source, 0))
        self.connect_started = time.monotonic()
        code = sock.connect_ex((host, port))
        self.sock, self.connected, self.used = sock, False, False
        self.reader = AnswerReader()
        self.owner.register_socket(self, select.EPOLLOUT)
        self.owner.stats.counts["connects"] += self.owner.stats.inside(time.monotonic())
        if code not in (0, errno.EINPROGRESS):
            self.fail("error")

    def on_event(self, events: int) -> None:
        if self.sock is None:
            return
        if not self.connected:
            if not events & (select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP):
                return  # an event of a closed socket whose descriptor was reused
            if self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.fail("error")
                return
            self.connected = True
            now = time.monotonic()
            if self.owner.stats.inside(now):
                self.owner.stats.connect.append(now - self.connect_started)
            self.owner.modify_socket(self, select.EPOLLIN)
            if self.out:
                self._send()
            return
        if events & select.EPOLLOUT and self.out:
            self._send()
        if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            self._receive()

    def _send(self) -> None:
        assert self.sock is not None
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._lost()
            return
        self.out = self.out[sent:]
        self.owner.modify_socket(self, select.EPOLLIN | (select.EPOLLOUT if self.out else 0))

    def _receive(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lost()
            return
        self.reader.feed(data)
        while self.sock is not None:
            try:
                answer = self.reader.next()
            except ProtocolError:
                self.fail("error")
                return
            if answer is None:
                return
            self._answered(answer)

    def _lost(self) -> None:
        """The server closed the connection (an idle timeout or an eviction)."""
        reused = self.used and not self.reader.buffer
        self.close()
        if self.request is None or self.flow is None:
            return
        if reused and not self.retried:
            # As HTTP clients do for a kept-alive connection closed under them:
            # the request never reached the application; resend it, newly signed.
            self.retried = True
            self.owner.stats.counts["resent on a new connection"] += 1
            self._issue()
        else:
            self.fail("error")

    def _answered(self, answer: Answer) -> None:
        if self.request is None:
            self.fail("error")  # an answer nobody asked for
            return
        now = time.monotonic()
        kind = self.request[0]
        self.owner.busy.discard(self)
        self.used = True
        stats = self.owner.stats
        if stats.inside(now):
            stats.bytes[kind] += answer.size
            stats.counts[f"{kind} {answer.status}"] += 1
            if kind in stats.latency_kinds and answer.status == 200:
                stats.latency.append(now - self.started)
        self.owner.maybe_verify(answer, self.nonce)
        if answer.close:
            self.close()
        self.request = None
        self._advance(answer)

    def fail(self, reason: str) -> None:
        kind = self.request[0] if self.request else "?"
        if self.owner.stats.inside(time.monotonic()):
            self.owner.stats.counts[f"{kind} {reason}"] += 1
        self.close()
        self.request = None
        if self.flow is not None:
            self._advance(None)

    def close(self) -> None:
        self.owner.busy.discard(self)
        if self.sock is not None:
            self.owner.unregister_socket(self)
            self.sock.close()
            self.sock, self.connected = None, False


class EventLoop:
    """Sockets, timers and the command pipe of one generator process."""

    def __init__(self, secret: str, registries: list[tuple[str, int]], pipe: Pipe) -> None:
        self.registries = registries
        self.signer = FastSigner(secret)
        #: The key of the virtual peers' certificates, which proves their registers.
        self.member_key: ec.EllipticCurvePrivateKey | None = None
        self._verifier = Signer(secret)
        self._answers = 0
        self.pipe = pipe
        self.epoll = select.epoll()
        self.by_fd: dict[int, Conn] = {}
        self.busy: set[Conn] = set()
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.stats = Stats()
        #: One connection per flow (closed when it ends), as p2pd's httpx client.
        self.fresh = False
        self.stopping = False

    def on_command(self, command: tuple[str, dict[str, Any]]) -> None:
        raise NotImplementedError

    def tick(self) -> None:
        """Called at every turn of the loop."""

    def register_socket(self, conn: Conn, events: int) -> None:
        assert conn.sock is not None
        self.by_fd[conn.sock.fileno()] = conn
        conn.mask = events
        self.epoll.register(conn.sock.fileno(), events | select.EPOLLRDHUP)

    def modify_socket(self, conn: Conn, events: int) -> None:
        assert conn.sock is not None
        if events != conn.mask:
            conn.mask = events
            self.epoll.modify(conn.sock.fileno(), events | select.EPOLLRDHUP)

    def unregister_socket(self, conn: Conn) -> None:
        assert conn.sock is not None
        fd = conn.sock.fileno()
        self.by_fd.pop(fd, None)
        self.epoll.unregister(fd)

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (when, next(self._seq), action))

    def maybe_verify(self, answer: Answer, nonce: str) -> None:
        self._answers += 1
        # 429 and 503 are unsigned (docs/protocol.md §3.4, §3.6): nothing to verify.
        unsigned = answer.status == 429 or answer.status >= 500
        if self._answers % VERIFY_EVERY or unsigned or answer.size > 1 << 20:
            return
        try:
            self._verifier.verify_response(
                answer.status, answer.headers, answer.body, nonce=nonce, now=time.time()
            )
            self.stats.counts["answers verified"] += 1
        except AuthError:
            self.stats.counts["answers with a bad signature"] += 1

    def loop(self) -> None:
        self.epoll.register(self.pipe.fileno(), select.EPOLLIN)
        next_scan = 0.0
        while not self.stopping:
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                heapq.heappop(self.timers)[2]()
            if now >= next_scan:
                next_scan = now + 0.1
                for conn in [c for c in self.busy if c.deadline < now]:
                    conn.fail("timeout")
            self.tick()
            wait = 0.1 if not self.timers else min(0.1, max(0.0, self.timers[0][0] - now))
            for fd, events in self.epoll.poll(wait):
                if fd == self.pipe.fileno():
                    self.on_command(self.pipe.recv())
                    continue
                owner = self.by_fd.get(fd)
                if owner is not None:
                    owner.on_event(events)
        for conn in list(self.by_fd.values()):
            conn.close()
