"""The server checks its answers' header fields itself, exactly as h11 would.

h11 is told the head is already checked (its validation was a measurable part
of every registry answer), so the server's own check must refuse what h11
refuses: a header field is how a response splits into two.
"""

from __future__ import annotations

import h11
import pytest
import trio

from p2pcommon.http.events import Request, Response
from p2pcommon.http.head import checked_fields
from p2pcommon.http.server import HttpServer

NAMES = ["X-Ok", "content-type", "a", "", "Bad Name", "Bad:Name", "Bad\r\nName", "é", "x\x00"]
VALUES = [
    "",
    "a",
    "a b",
    "a\tb",
    "a  \t b",
    " a",
    "a ",
    "\ta",
    "a\t",
    " ",
    "a\x00b",
    "a\rb",
    "a\nb",
    "a\r\nSet-Cookie: x",
    "a\x0bb",
    "a\x0cb",
    "\x01\x7f",
    'sig=("@status" "content-digest");created=1;keyid="p2p"',
    "é",
]


def h11_verdict(name: str, value: str) -> str:
    try:
        h11.Response(status_code=200, headers=[(name, value)])
    except h11.LocalProtocolError:
        return "refused"
    except UnicodeEncodeError:
        return "not ascii"
    return "ok"


def our_verdict(name: str, value: str) -> str:
    try:
        checked_fields([(name, value)])
    except h11.LocalProtocolError:
        return "refused"
    except UnicodeEncodeError:
        return "not ascii"
    return "ok"


@pytest.mark.parametrize("name", NAMES)
def test_header_fields_are_refused_exactly_when_h11_refuses_them(name: str) -> None:
    for value in VALUES:
        assert our_verdict(name, value) == h11_verdict(name, value), (name, value)


async def test_a_header_value_with_a_line_break_never_reaches_the_wire() -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/evil":
            return Response(200, b"{}", [("X-Note", "a\r\nSet-Cookie: stolen=1")])
        return Response(200, b"{}")

    server = HttpServer(handler)
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(server.run, listeners)
        port = listeners[0].socket.getsockname()[1]
        received = b""
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(b"GET /evil HTTP/1.1\r\nHost: x\r\n\r\n")
            while chunk := await stream.receive_some(65536):
                received += chunk
        assert b"stolen" not in received
        # The server goes on with every other connection.
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(b"GET /fine HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 200 ")
        await server.shutdown(1)
