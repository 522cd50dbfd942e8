"""The HTTP client: keep-alive, real TLS, and servers that misbehave on purpose."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from p2pcommon.http.client import (
    AnswerTooLarge,
    ClientConnection,
    HttpClientError,
    connect,
    tls_context,
)
from p2pcommon.http.events import Request, Response, json_response
from p2pcommon.http.server import HttpServer
from p2pcommon.registry_client import RegistryClient, RegistryUnavailable
from tests.support import SECRET, Peer, free_port, run_registryd

Handler = Callable[[trio.SocketStream], Awaitable[None]]


class CountingListener(trio.abc.Listener[Any]):
    """A listener that counts the connections it hands out."""

    def __init__(self, inner: trio.abc.Listener[Any]) -> None:
        self.inner = inner
        self.accepted = 0

    async def accept(self) -> Any:
        stream = await self.inner.accept()
        self.accepted += 1
        return stream

    async def aclose(self) -> None:
        await self.inner.aclose()


@asynccontextmanager
async def http_server(
    handler: Callable[[Request], Awaitable[Response]], tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[int, CountingListener]]:
    """Our HttpServer on loopback (over TLS if given); yields its port and its listener."""
    server = HttpServer(handler)
    [tcp] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = tcp.socket.getsockname()[1]
    inner: trio.abc.Listener[Any] = tcp if tls is None else trio.SSLListener(tcp, tls)
    listener = CountingListener(inner)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run, [listener])
        yield port, listener
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[int]:
    """A TCP server that runs ``handler`` on each connection: any bytes, or none."""

    async def serve(stream: trio.SocketStream) -> None:
        # The client hangs up on what it refuses: that ends the handler.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await handler(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        listener = listeners[0]
        yield listener.socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def read_request(stream: trio.SocketStream) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            return
        data += chunk


async def echo(request: Request) -> Response:
    return json_response(200, {"method": request.method, "target": request.target})


async def open_connection(port: int, read_timeout: float = 5.0) -> ClientConnection:
    stream = await connect("127.0.0.1", port)
    return ClientConnection(
        stream, name="the server", host=f"127.0.0.1:{port}", read_timeout=read_timeout
    )


async def test_requests_reuse_one_kept_alive_connection() -> None:
    async with http_server(echo) as (port, listener):
        connection = await open_connection(port)
        try:
            for target in ("/one", "/two?x=1"):
                head = await connection.request("POST", target, {"X-Test": "1"}, b"{}")
                assert head.status == 200 and head.header("content-type") == "application/json"
                assert target.encode() in await connection.body(1000)
                assert connection.reusable
        finally:
            await connection.aclose()
        assert listener.accepted == 1


async def test_the_registry_client_keeps_its_connection_between_calls(tmp_path: Path) -> None:
    """Heartbeats every few seconds cost one connection, not one each (as with httpx)."""
    with run_registryd(tmp_path) as registry:
        peer = Peer.new()
        async with RegistryClient([registry.url], SECRET) as client:
            lease = await client.register(peer.registration(), peer.prove)
            for _ in range(3):
                await client.heartbeat(peer.id, lease.lease)
            idle = client._registries[registry.url].idle
            assert idle is not None
            first = idle[0].stream
            await client.clients()
            idle = client._registries[registry.url].idle
            assert idle is not None and idle[0].stream is first


async def test_a_connection_the_registry_closed_is_replaced_once() -> None:
    """A kept-alive connection closed by the server meanwhile costs a retry, not a failure."""
    async with http_server(echo) as (port, listener):
        url = f"http://127.0.0.1:{port}"
        async with RegistryClient([url], SECRET) as client:
            with pytest.raises(RegistryUnavailable, match="not signed with our secret"):
                await client.clients()  # our echo server does not sign: but it kept alive
            idle = client._registries[url].idle
            assert idle is not None
            await idle[0].stream.aclose()  # as a server's idle timeout would
            with pytest.raises(RegistryUnavailable, match="not signed with our secret"):
                await client.clients()
        assert listener.accepted == 2


UNSIGNED_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


async def test_a_kept_connection_the_server_closed_as_idle_is_retried_once() -> None:
    """The server closes its side after answering (an idle timeout, say): the next
    call finds the connection dead before any answer, and tries a fresh one."""
    connections: list[int] = []

    async def answer_then_close(stream: trio.SocketStream) -> None:
        connections.append(1)
        await read_request(stream)
        await stream.send_all(UNSIGNED_OK)
        await stream.aclose()

    async with raw_server(answer_then_close) as port:
        url = f"http://127.0.0.1:{port}"
        async with RegistryClient([url], SECRET, timeout=0.5) as client:
            for _ in range(2):
                with pytest.raises(RegistryUnavailable, match="not signed with our secret"):
                    await client.clients()
    assert len(connections) == 2


async def test_a_kept_connection_that_goes_silent_is_not_retried() -> None:
    """A timeout is no stale connection: the registry may be working on it, and
    trying again would double the wait before failing over."""
    connections: list[int] = []

    async def answer_then_hang(stream: trio.SocketStream) -> None:
        connections.append(1)
        await read_request(stream)
        await stream.send_all(UNSIGNED_OK)
        await read_request(stream)
        await trio.sleep_forever()

    async with raw_server(answer_then_hang) as port:
        url = f"http://127.0.0.1:{port}"
        async with RegistryClient([url], SECRET, timeout=0.5) as client:
            with pytest.raises(RegistryUnavailable, match="not signed with our secret"):
                await client.clients()
            with trio.fail_after(10), pytest.raises(RegistryUnavailable, match="sent nothing"):
                await client.clients()
    assert len(connections) == 1


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA, name: str = "localhost") -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    return context


async def test_tls_verifies_the_certificate_and_the_name(ca: trustme.CA) -> None:
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    async with http_server(echo, server_tls(ca)) as (port, _):
        stream = await connect("localhost", port, tls=trusted)
        connection = ClientConnection(stream, name="the server", host=f"localhost:{port}")
        try:
            assert (await connection.request("GET", "/x")).status == 200
            assert b"/x" in await connection.body(1000)
        finally:
            await connection.aclose()
        # Another name than the certificate's, or a CA nobody trusts: no connection.
        with pytest.raises(HttpClientError, match="cannot connect to 127.0.0.1.*certificate"):
            await connect("127.0.0.1", port, tls=trusted)
        with pytest.raises(HttpClientError, match="certificate verify failed"):
            await connect("localhost", port, tls=tls_context(True))


async def test_an_https_registry_is_used_with_the_trust_given(
    tmp_path: Path, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert = ca.issue_cert("localhost")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    env = {"REGISTRYD_TLS_CERT": str(cert_path), "REGISTRYD_TLS_KEY": str(key_path)}
    port = free_port()
    with run_registryd(tmp_path, env, port=port):
        url = f"https://localhost:{port}"
        async with RegistryClient([url], SECRET) as client:
            # The system trust store does not know the test CA.
            with pytest.raises(RegistryUnavailable, match="certificate verify failed"):
                await client.clients()
        ca_path = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_path))
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_path))  # OpenSSL's override of that store
        async with RegistryClient([url], SECRET) as client:
            assert await client.clients() == []


async def test_a_server_that_never_answers_times_out() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await trio.sleep_forever()

    async with raw_server(silent) as port:
        connection = await open_connection(port, read_timeout=0.2)
        with trio.fail_after(10), pytest.raises(HttpClientError, match="sent nothing for 0.2 s"):
            await connection.request("GET", "/")
        await connection.aclose()


async def test_an_endless_head_is_cut_off() -> None:
    async def endless(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nX-Long: ")
        while True:
            await stream.send_all(b"a" * 4096)

    async with raw_server(endless) as port:
        connection = await open_connection(port)
        with trio.fail_after(10), pytest.raises(HttpClientError, match="spoke bad HTTP"):
            await connection.request("GET", "/")
        await connection.aclose()


async def test_a_body_past_the_limit_is_refused() -> None:
    sent: list[int] = []

    async def large(stream: trio.SocketStream) -> None:
        await read_request(stream)
        declared = b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n"
        chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        await stream.send_all(declared if not sent else chunked)
        sent.append(1)
        while True:
            await stream.send_all(b"1000\r\n" + b"x" * 4096 + b"\r\n")

    async with raw_server(large) as port:
        # Declared too large: refused before any of it is read.
        connection = await open_connection(port)
        assert (await connection.request("GET", "/")).status == 200
        with pytest.raises(AnswerTooLarge, match="sent more than 1000 bytes"):
            await connection.body(1000)
        await connection.aclose()
        # Not declared: refused once past the limit.
        connection = await open_connection(port)
        assert (await connection.request("GET", "/")).status == 200
        with trio.fail_after(10), pytest.raises(AnswerTooLarge):
            await connection.body(100_000)
        await connection.aclose()


async def test_a_close_mid_body_or_before_answering_is_an_error() -> None:
    async def cut(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        await stream.aclose()

    async def hang_up(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.aclose()

    async with raw_server(cut) as port:
        connection = await open_connection(port)
        assert (await connection.request("GET", "/")).status == 200
        with pytest.raises(HttpClientError, match="closed the connection mid-answer"):
            await connection.body(1000)
        assert not connection.reusable
        await connection.aclose()
    async with raw_server(hang_up) as port:
        connection = await open_connection(port)
        with pytest.raises(HttpClientError, match="the server closed the connection without"):
            await connection.request("GET", "/")
        await connection.aclose()


async def test_nobody_listening_is_an_error_naming_the_address() -> None:
    port = free_port()
    with pytest.raises(HttpClientError, match=f"cannot connect to 127.0.0.1:{port}"):
        await connect("127.0.0.1", port)
