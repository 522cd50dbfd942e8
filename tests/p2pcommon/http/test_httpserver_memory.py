"""An idle keep-alive connection holds nothing of the exchange it finished.

Real server, real sockets, in this process so that the objects can be watched:
a registry with thousands of idle peers must not keep each one's last answer
(a member list is hundreds of kilobytes) while it waits for the next request.
"""

from __future__ import annotations

import gc
import tracemalloc
import weakref

import trio

from p2pcommon.http.events import Request, Response
from p2pcommon.http.server import HttpServer

ANSWER_BYTES = 1 << 20
CONNECTIONS = 20


async def read_answer(stream: trio.SocketStream) -> bytes:
    """One whole answer (head and Content-Length body) off a keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += await stream.receive_some(65536)
    assert head.startswith(b"HTTP/1.1 200 "), head
    return body


async def test_idle_keep_alive_connections_hold_neither_request_nor_answer() -> None:
    requests: list[weakref.ref[Request]] = []
    answers: list[weakref.ref[Response]] = []

    async def handler(request: Request) -> Response:
        requests.append(weakref.ref(request))
        # A fresh body per answer, as a member list is: nothing shared to hide a leak.
        response = Response(200, bytes(ANSWER_BYTES - 1) + bytes([len(answers) % 256]))
        answers.append(weakref.ref(response))
        return response

    server = HttpServer(handler)
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(server.run, listeners)
        port = listeners[0].socket.getsockname()[1]
        gc.collect()
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            streams = []
            for _ in range(CONNECTIONS):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                streams.append(stream)
                await stream.send_all(b"GET /list HTTP/1.1\r\nHost: registry\r\n\r\n")
                assert len(await read_answer(stream)) == ANSWER_BYTES
            # Every connection is kept alive and idle now, its server task
            # waiting for the next request.
            await trio.testing.wait_all_tasks_blocked()
            gc.collect()
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert server.connection_count == CONNECTIONS
        assert [ref() for ref in answers] == [None] * CONNECTIONS
        assert [ref() for ref in requests] == [None] * CONNECTIONS
        # 20 answers of 1 MiB would be 20 MiB; what idle connections keep is small.
        assert held - before < 2 * ANSWER_BYTES, f"{(held - before) / 2**20:.1f} MiB held"
        for stream in streams:
            await stream.aclose()
        await server.shutdown(1)
