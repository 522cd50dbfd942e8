"""The HTTP server's Date header: every answer tells the client the server's time."""

from __future__ import annotations

import email.utils
import time

import httpx
import trio

from p2pcommon.httpserver import HttpServer, Request, Response, http_date, json_response


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
