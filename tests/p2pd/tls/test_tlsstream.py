"""BatchedTLSStream against trio's own SSLStream, paired in memory (no sockets)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from p2pd.tls.contexts import client_context, presented_id, server_context
from p2pd.tls.identity import load_or_create
from p2pd.tls.stream import BatchedTLSStream


async def pair(tmp_path: Path) -> tuple[BatchedTLSStream, trio.SSLStream[Any], str]:
    server_identity, _ = load_or_create(tmp_path / "server")
    client_identity, _ = load_or_create(tmp_path / "client")
    client_end, server_end = trio.testing.memory_stream_pair()
    client = BatchedTLSStream(client_end, client_context(client_identity, server_identity.cert_pem))
    server = trio.SSLStream(
        server_end, server_context(server_identity, [client_identity.cert_pem]), server_side=True
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    return client, server, server_identity.id


async def test_a_receive_carries_many_records_and_every_byte(tmp_path: Path) -> None:
    client, server, server_id = await pair(tmp_path)
    assert presented_id(client) == server_id
    payload = os.urandom(5 * 1024 * 1024)
    sizes: list[int] = []
    digest = hashlib.sha256()

    async def receive() -> None:
        received = 0
        while received < len(payload):
            chunk = await client.receive_some(256 * 1024)
            sizes.append(len(chunk))
            digest.update(chunk)
            received += len(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await server.send_all(payload)
    assert digest.digest() == hashlib.sha256(payload).digest()
    # trio.SSLStream would hand over one 16 KiB record per receive.
    assert max(sizes) > 16 * 1024
    assert len(sizes) < len(payload) // (16 * 1024)


async def test_requests_go_out_and_close_notify_ends_the_stream(tmp_path: Path) -> None:
    client, server, _ = await pair(tmp_path)
    await client.send_all(b"GET /files HTTP/1.1\r\n\r\n")
    assert await server.receive_some(1024) == b"GET /files HTTP/1.1\r\n\r\n"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.aclose)  # sends close_notify
        assert await client.receive_some() == b""
    await client.aclose()


async def test_a_cut_connection_is_a_broken_stream(tmp_path: Path) -> None:
    client, server, _ = await pair(tmp_path)
    await server.transport_stream.aclose()  # TCP gone, no close_notify
    with pytest.raises(trio.BrokenResourceError):
        await client.receive_some()
