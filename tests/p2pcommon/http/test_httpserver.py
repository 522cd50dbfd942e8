"""The HTTP server: the Date header, and staying up whatever a client does."""

from __future__ import annotations

import email.utils
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import trio

from p2pcommon.http.events import Body, Request, Response, json_response
from p2pcommon.http.head import http_date
from p2pcommon.http.server import HttpServer, Limits


def test_http_date_is_rfc_9110_imf_fixdate_and_cached_per_second() -> None:
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    first = http_date(1_700_000_000.1)
    assert first == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert http_date(1_700_000_000.9) is first  # same second: the cached string
    assert http_date(1_700_000_001.0) == "Tue, 14 Nov 2023 22:13:21 GMT"


async def test_every_answer_carries_the_servers_date_unless_the_handler_set_one() -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/own":
            return Response(204, headers=[("Date", "Mon, 01 Jan 2001 00:00:00 GMT")])
        return json_response(200, {"ok": True})

    server = HttpServer(handler)
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(server.run, listeners)
        url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        async with httpx.AsyncClient() as client:
            before = int(time.time())
            answer = await client.get(url + "/")
            after = time.time()
            own = await client.get(url + "/own")
        await server.shutdown(1)
    served = email.utils.parsedate_to_datetime(answer.headers["date"]).timestamp()
    assert before <= served <= after
    assert own.headers.get_list("date") == ["Mon, 01 Jan 2001 00:00:00 GMT"]


# -- staying up: what a port scanner, an idle crowd or a stalled reader does ----


@asynccontextmanager
async def serving(
    handler: Callable[[Request], Awaitable[Response]], limits: Limits
) -> AsyncIterator[tuple[HttpServer, int]]:
    server = HttpServer(handler, limits)
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(server.run, listeners)
        yield server, listeners[0].socket.getsockname()[1]
        await server.shutdown(1)


async def ok(request: Request) -> Response:
    return json_response(200, {"ok": True})


async def test_a_client_that_resets_right_after_connecting_ends_only_its_connection() -> None:
    async with serving(ok, Limits()) as (_, port):
        for _ in range(50):
            sock = trio.socket.socket()
            await sock.connect(("127.0.0.1", port))
            # SO_LINGER 0: close() sends RST, as a port scanner does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"http://127.0.0.1:{port}/")
    assert answer.status_code == 200


async def test_idle_connections_make_room_for_a_new_client() -> None:
    limits = Limits(max_connections=8, max_per_address=4)
    async with serving(ok, limits) as (server, port):
        idle = []
        for _ in range(6):
            sock = trio.socket.socket()
            await sock.connect(("127.0.0.1", port))
            idle.append(sock)
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"http://127.0.0.1:{port}/")
        assert answer.status_code == 200
        assert server.connection_count <= 4
        # The oldest idle ones were closed to make room.
        with trio.fail_after(5):
            assert await idle[0].recv(1) == b""
        for sock in idle:
            sock.close()


async def test_a_client_that_stops_reading_is_let_go_and_its_body_closed() -> None:
    closed = trio.Event()

    class Endless(Body):
        def __aiter__(self) -> Endless:
            return self

        async def __anext__(self) -> bytes:
            await trio.lowlevel.checkpoint()
            return b"x" * 65536

        async def aclose(self) -> None:
            closed.set()

    async def endless(request: Request) -> Response:
        return Response(200, stream=Endless(), length=1 << 40)

    async with serving(endless, Limits(send_timeout=0.5)) as (_, port):
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", port))
        await sock.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # Never read: the server's writes block, then hit the send timeout.
        with trio.fail_after(30):
            await closed.wait()
        sock.close()


async def test_head_gets_the_head_of_any_answer_and_the_connection_goes_on() -> None:
    async with serving(ok, Limits()) as (_, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                b"HEAD /anything HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            received = b""
            with trio.fail_after(10):
                while received.count(b"HTTP/1.1 200") < 2 or not received.endswith(b"}"):
                    received += await stream.receive_some(4096)
    head, rest = received.split(b"\r\n\r\n", 1)
    assert b"content-length: 11" in head.lower()
    assert rest.startswith(b"HTTP/1.1 200")  # no body after the HEAD answer's head
    assert rest.endswith(b'{"ok":true}')
