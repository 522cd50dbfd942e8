"""A small HTTP/1.1 server: h11 for the protocol, trio for the I/O.

The protocol knowledge stays in h11; this module is the glue: timeouts for
idle and slow clients, bounded header and body sizes, keep-alive, and a
graceful shutdown that lets requests in flight finish before a deadline.
Handlers are plain ``async (Request) -> Response`` callables.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import h11
import trio

from p2pcommon.boundary import failure_boundary
from p2pcommon.http.accepting import accept_forever, peer_host
from p2pcommon.http.connections import Connection, ConnectionTable
from p2pcommon.http.events import Request, Response, error_response
from p2pcommon.http.fdlimit import connection_bound
from p2pcommon.http.send import send_response
from p2pcommon.logs import RepeatedLines

log = logging.getLogger("p2pcommon.httpserver")  # the name it has always logged under

RECEIVE_SIZE = 64 * 1024


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 64 * 1024
    #: Seconds a kept-alive connection may wait for its next request.
    idle_timeout: float = 30.0
    #: Seconds from a request's first byte to its last (and for a TLS handshake).
    request_timeout: float = 10.0
    #: Seconds one write may wait for a client that stopped reading; then the
    #: connection (and what it holds, e.g. an upload slot) is let go.
    send_timeout: float = 30.0
    #: Connections served at once, in all and from one address (an IPv6 /64).
    #: Past either bound an idle or stalled connection makes room
    #: (p2pcommon.http.connections), or the newcomer is closed.
    max_connections: int = 1024
    max_per_address: int = 256
    #: File descriptors kept for all but connections (files, databases, the store,
    #: control clients, transfers): the connection bound fits under the limit less this.
    fd_reserve: int = 256


Handler = Callable[[Request], Awaitable[Response]]
#: Turns an accepted stream into (stream to speak HTTP on, client id), or None to drop it.
Admit = Callable[[trio.abc.Stream], Awaitable[tuple[trio.abc.Stream, str | None] | None]]


class _Closing(Exception):
    """Raised inside a connection to answer with ``response`` and close."""

    def __init__(self, response: Response | None) -> None:
        self.response = response


class HttpServer:
    def __init__(
        self, handler: Handler, limits: Limits | None = None, *, admit: Admit | None = None
    ) -> None:
        self._handler = handler
        self._admit = admit
        self.limits = limits = limits or Limits()
        bound = connection_bound(limits.max_connections, limits.fd_reserve)
        self._table = ConnectionTable(bound, min(limits.max_per_address, bound))
        # Lines a client can cause at will, at most a few a minute.
        self._accept_errors = RepeatedLines(log)
        self._refused = RepeatedLines(log, burst=5)
        self._accepting = trio.CancelScope()
        self._closing = False
        self._drained = trio.Event()
        self._in_progress = 0

    async def run(
        self,
        listeners: Sequence[trio.abc.Listener[Any]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until shutdown() and until every connection has ended."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._accept, listeners, nursery)
            task_status.started()

    async def _accept(
        self, listeners: Sequence[trio.abc.Listener[Any]], nursery: trio.Nursery
    ) -> None:
        with self._accepting:
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    accepting.start_soon(
                        accept_forever,
                        listener,
                        lambda stream: nursery.start_soon(self.serve_stream, stream),
                        self._accept_errors,
                        self._table.max_connections,
                    )

    async def shutdown(self, deadline: float) -> None:
        """Stop accepting, close idle connections, give busy ones ``deadline`` seconds."""
        self._closing = True
        self._accepting.cancel()
        for conn in list(self._table.all):
            if conn.idle:
                conn.scope.cancel()
        if not self._table.all:
            self._drained.set()
        with trio.move_on_after(deadline):
            await self._drained.wait()
        for conn in list(self._table.all):
            conn.scope.cancel()

    @property
    def connection_count(self) -> int:
        return len(self._table.all)

    @property
    def in_progress(self) -> int:
        """Requests received whole and not yet answered: not those still arriving (a
        client that sends a byte and stalls must not shed everyone else's requests)."""
        return self._in_progress

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve HTTP/1.1 on one accepted stream until it closes; never raises.

        This is the failure boundary of one connection: trio's serve_listeners
        lets a handler's exception end the whole server, so everything,
        including the first look at the socket (a client that connected and
        reset at once makes getpeername fail), happens inside it.
        """
        conn: Connection | None = None
        client_host = "unknown"
        try:
            with failure_boundary("connection", "a connection", log):
                try:
                    client_host = peer_host(stream)
                    conn = Connection(
                        trio.CancelScope(), client_host, idle_since=trio.current_time()
                    )
                    if not self._table.admit(conn, trio.current_time()):
                        self._refused.log(
                            logging.WARNING,
                            "refused connections",
                            "refused a connection from %s: every connection is busy",
                            client_host,
                        )
                        conn = None
                        return
                    with conn.scope:
                        await self._serve_connection(stream, conn, client_host)
                except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                    pass  # the client went away or stopped reading: nothing to answer
                except OSError as exc:
                    log.info("connection from %s ended: %s", client_host, exc.strerror or exc)
        finally:
            if conn is not None:
                self._table.discard(conn)
            if self._closing and not self._table.all:
                self._drained.set()
            await trio.aclose_forcefully(stream)

    async def _serve_connection(
        self, stream: trio.abc.Stream, conn: Connection, client_host: str
    ) -> None:
        h11conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        client_id = None
        if self._admit is not None:
            admitted = None
            with trio.move_on_after(self.limits.request_timeout):
                admitted = await self._admit(stream)
            if admitted is None:
                return
            stream, client_id = admitted
        await self._serve_requests(stream, h11conn, conn, client_host, client_id)

    async def _serve_requests(
        self,
        stream: trio.abc.Stream,
        h11conn: h11.Connection,
        conn: Connection,
        client_host: str,
        client_id: str | None,
    ) -> None:
        # One exchange per call: what it held (a member list can be hundreds
        # of kilobytes) is gone with its frame before the connection idles.
        while not self._closing:
            if not await self._exchange(stream, h11conn, conn, client_host, client_id):
                return
            h11conn.start_next_cycle()
            conn.became_idle(trio.current_time())

    async def _exchange(
        self,
        stream: trio.abc.Stream,
        h11conn: h11.Connection,
        conn: Connection,
        client_host: str,
        client_id: str | None,
    ) -> bool:
        """Receive one request and answer it; False if the connection is to end."""
        try:
            request = await self._receive_request(stream, h11conn, conn, client_host)
        except _Closing as closing:
            if closing.response is not None and h11conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                closing.response.headers.append(("Connection", "close"))
                await send_response(
                    stream, h11conn, closing.response, send_timeout=self.limits.send_timeout
                )
            return False
        if request is None:
            return False
        request.client_id = client_id
        self._in_progress += 1
        try:
            request.in_progress = self._in_progress
            response = None
            with failure_boundary("request", f"{request.method} {request.path[:200]}", log):
                response = await self._handler(request)
            if response is None:
                response = error_response(500, "internal error", "see the server's log")
            if self._closing:
                response.headers.append(("Connection", "close"))
            await send_response(
                stream,
                h11conn,
                response,
                send_timeout=self.limits.send_timeout,
                head_only=request.method == "HEAD",
            )
        finally:
            self._in_progress -= 1
        return h11conn.our_state is h11.DONE and h11conn.their_state is h11.DONE

    async def _receive_request(
        self,
        stream: trio.abc.Stream,
        h11conn: h11.Connection,
        conn: Connection,
        client_host: str,
    ) -> Request | None:
        limits = self.limits
        buffered, closed = h11conn.trailing_data
        # One scope for both waits (each scope is a cost on every request):
        # idle_timeout until a first byte, then request_timeout for the rest.
        with trio.move_on_after(limits.idle_timeout) as scope:
            if not buffered and not closed:
                await self._receive_into(stream, h11conn)
            now = trio.current_time()
            conn.request_started(now)
            scope.deadline = now + limits.request_timeout
            request = await self._read_request(stream, h11conn, client_host)
            # Whole: busy from now on, never evicted (bounded by its own deadlines).
            conn.request_received()
            return request
        if conn.idle:
            return None  # an idle keep-alive connection is closed quietly
        raise _Closing(error_response(408, "request timeout", "send the whole request sooner"))

    async def _read_request(
        self, stream: trio.abc.Stream, h11conn: h11.Connection, client_host: str
    ) -> Request | None:
        head = await self._await_event(stream, h11conn)
        if isinstance(head, h11.ConnectionClosed):
            return None
        if not isinstance(head, h11.Request):
            raise _Closing(error_response(400, "bad request", "expected a request"))
        # h11 only bounds a head that arrives in pieces; one that came in a
        # single read is measured here.
        head_size = len(head.target) + sum(len(n) + len(v) + 4 for n, v in head.headers)
        if head_size > self.limits.max_header_bytes:
            raise _Closing(
                error_response(
                    431,
                    "header section too large",
                    f"request line and headers are limited to {self.limits.max_header_bytes} bytes",
                )
            )
        for name, value in head.headers:
            if name == b"content-length" and int(value) > self.limits.max_body_bytes:
                raise _Closing(_too_large(self.limits.max_body_bytes))
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self._await_event(stream, h11conn)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.limits.max_body_bytes:
                    raise _Closing(_too_large(self.limits.max_body_bytes))
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise _Closing(None)
        return Request(
            method=head.method.decode("ascii"),
            target=head.target.decode("ascii", "replace"),
            headers=list(head.headers),
            body=b"".join(chunks),
            client_host=client_host,
        )

    def _next_event(self, h11conn: h11.Connection) -> Any:
        try:
            return h11conn.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            error = "header section too large" if status == 431 else "bad request"
            raise _Closing(error_response(status, error, str(exc))) from None

    async def _await_event(self, stream: trio.abc.Stream, h11conn: h11.Connection) -> Any:
        while True:
            event = self._next_event(h11conn)
            if event is not h11.NEED_DATA:
                return event
            await self._receive_into(stream, h11conn)

    @staticmethod
    async def _receive_into(stream: trio.abc.Stream, h11conn: h11.Connection) -> None:
        data = await stream.receive_some(RECEIVE_SIZE)
        h11conn.receive_data(bytes(data))


def _too_large(limit: int) -> Response:
    return error_response(413, "body too large", f"request bodies are limited to {limit} bytes")
