"""HEAD answers every GET route of the registry with GET's head and no body (docs/protocol.md §3.2).

The real HTTP server and RegistryApp on a loopback socket; each HEAD is
pipelined with the GET of the same route on one connection, so a body sent
after the HEAD's head (or a Content-Length that is not GET's) shows up as a
broken second answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
import trio

from p2pcommon.http.server import HttpServer
from p2pcommon.signing.signer import Signer
from registryd.app import RegistryApp
from registryd.metrics import RegistryMetrics
from registryd.store import MemoryStore
from tests.support import SECRET, Peer

Head = tuple[int, dict[str, str]]


@pytest.fixture
async def registry_port() -> AsyncIterator[int]:
    store = MemoryStore()
    peer = Peer.new("alice")
    await store.register(
        peer.id,
        peer.name,
        peer.cert,
        ("127.0.0.1:7070",),
        time.time(),
        ttl=30.0,
        lease_hash="5e" * 32,
    )
    server = HttpServer(RegistryApp(Signer(SECRET), store, RegistryMetrics()).handle)
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(server.run, listeners)
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


class Reader:
    """Answers read off one connection: a head, then exactly the body it announces."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def head(self) -> Head:
        while b"\r\n\r\n" not in self._buffer:
            self._buffer += await self._more()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        fields = dict(line.split(": ", 1) for line in lines)
        return int(status_line.split()[1]), {k.lower(): v for k, v in fields.items()}

    async def body(self, length: int) -> bytes:
        while len(self._buffer) < length:
            self._buffer += await self._more()
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return body

    async def _more(self) -> bytes:
        with trio.fail_after(10):
            data = await self._stream.receive_some(65536)
        assert data, f"the registry closed the connection; unread: {self._buffer[:200]!r}"
        return data


def request(method: str, path: str, signed: bool = False) -> tuple[bytes, str]:
    headers: dict[str, str] = {}
    nonce = ""
    if signed:
        headers, nonce = Signer(SECRET).sign_request(method, path, b"", now=time.time())
    lines = [f"{method} {path} HTTP/1.1", "Host: registry"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), nonce


async def head_then_get(port: int, path: str, signed: bool = False) -> tuple[Head, Head, bytes]:
    """HEAD and GET of ``path`` pipelined on one connection: both heads, and GET's body."""
    head_request, _ = request("HEAD", path, signed)
    get_request, _ = request("GET", path, signed)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(head_request + get_request)
        reader = Reader(stream)
        head = await reader.head()
        get = await reader.head()  # right after HEAD's head: it had no body
        body = await reader.body(int(get[1]["content-length"]))
    return head, get, body


async def test_healthz_answers_head_with_gets_length(registry_port: int) -> None:
    (status, fields), (get_status, get_fields), body = await head_then_get(
        registry_port, "/healthz"
    )
    assert (status, get_status) == (200, 200)
    assert int(fields["content-length"]) == len(body) == len(b'{"status":"ok"}')
    assert fields["content-type"] == get_fields["content-type"]


async def test_metrics_answer_head_with_the_length_of_a_scrape(registry_port: int) -> None:
    (status, fields), (get_status, get_fields), body = await head_then_get(
        registry_port, "/metrics"
    )
    assert (status, get_status) == (200, 200)
    # The HEAD itself is counted in the GET's scrape: a few digits apart, not 0.
    assert abs(int(fields["content-length"]) - len(body)) < 100 < len(body)
    assert fields["content-type"] == get_fields["content-type"]


async def test_a_signed_head_of_clients_gets_a_signed_head(registry_port: int) -> None:
    """GET's status and length; signed as an answer without content (RFC 9530 appendix B.2)."""
    head_request, nonce = request("HEAD", "/clients", signed=True)
    stream = await trio.open_tcp_stream("127.0.0.1", registry_port)
    async with stream:
        await stream.send_all(head_request)
        status, fields = await Reader(stream).head()
    assert status == 200
    # Verified exactly as any answer: against the content received, none.
    Signer(SECRET).verify_response(status, fields.items(), b"", nonce=nonce, now=time.time())
    _, (get_status, get_fields), listed = await head_then_get(registry_port, "/clients", True)
    assert get_status == 200 and len(json.loads(listed)["clients"]) == 1
    assert int(fields["content-length"]) == len(listed)


async def test_head_of_clients_unsigned_is_refused_like_get(registry_port: int) -> None:
    (status, fields), (get_status, _), body = await head_then_get(registry_port, "/clients")
    assert (status, get_status) == (401, 401)
    assert int(fields["content-length"]) == len(body)
    assert json.loads(body)["error"] == "missing signature"


@pytest.mark.parametrize("path", ["/register", "/heartbeat", "/leave"])
async def test_post_routes_refuse_head(registry_port: int, path: str) -> None:
    (status, fields), _, _ = await head_then_get(registry_port, path)
    assert status == 405 and fields["allow"] == "POST"
