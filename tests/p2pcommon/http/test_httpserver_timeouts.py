"""Idle and request timeouts, and the count of requests in progress, on virtual time.

Real sockets, trio's autojump clock: time jumps whenever every task waits.
"""

from __future__ import annotations

import trio
import trio.testing

from p2pcommon.http.events import Request, Response
from p2pcommon.http.server import HttpServer, Limits

LIMITS = Limits(idle_timeout=30.0, request_timeout=10.0)


async def ok(request: Request) -> Response:
    return Response(200, b"{}")


async def receive_all(stream: trio.SocketStream) -> bytes:
    received = b""
    while chunk := await stream.receive_some(65536):
        received += chunk
    return received


async def test_an_idle_connection_is_closed_quietly_after_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = HttpServer(ok, LIMITS)
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(server.run, listeners)
        port = listeners[0].socket.getsockname()[1]
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            opened = trio.current_time()
            assert await receive_all(stream) == b""
            assert trio.current_time() - opened >= LIMITS.idle_timeout
        await server.shutdown(1)


async def test_a_request_begun_late_gets_request_timeout_from_its_first_byte(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[int] = []

    async def handler(request: Request) -> Response:
        seen.append(request.in_progress)
        return Response(200, b"{}")

    server = HttpServer(handler, LIMITS)
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(server.run, listeners)
        port = listeners[0].socket.getsockname()[1]
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await stream.receive_some(65536)
            # Idle for most of idle_timeout, then half a request, then nothing.
            await trio.sleep(LIMITS.idle_timeout - 5)
            await stream.send_all(b"GET / HTTP/1.1\r\nHo")
            begun = trio.current_time()
            await trio.testing.wait_all_tasks_blocked()
            # Half a request is not in progress: stalled clients must not count
            # towards shedding the others' whole requests.
            assert server.in_progress == 0
            answer = await receive_all(stream)
            waited = trio.current_time() - begun
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert LIMITS.request_timeout <= waited < LIMITS.request_timeout + 1
        await trio.testing.wait_all_tasks_blocked()
        assert server.in_progress == 0
        assert seen == [1]
        await server.shutdown(1)
