"""p2pd/tls/bodypump.py: bodies moved by worker threads, over real TLS on a socketpair."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from p2pd.tls.bodypump import BodyCut, DirectBody, receive_direct, send_direct
from p2pd.tls.stream import BatchedTLSStream

MIB = 1024 * 1024


@pytest.fixture
async def tls_pair() -> AsyncIterator[tuple[trio.SSLStream[Any], BatchedTLSStream]]:
    """(the member's end, our end) of a TLS 1.3 connection, the handshake done."""
    ca = trustme.CA()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("member").configure_cert(server_context)
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname = False
    ca.configure_trust(client_context)
    theirs, ours = (
        trio.SocketStream(trio.socket.from_stdlib_socket(s)) for s in socket.socketpair()
    )
    member = trio.SSLStream(theirs, server_context, server_side=True)
    us = BatchedTLSStream(ours, client_context)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(member.do_handshake)
        await us.do_handshake()
    yield member, us
    await trio.aclose_forcefully(member)
    await trio.aclose_forcefully(us)


@pytest.fixture
def partial(tmp_path: Path) -> Iterator[int]:
    """The open partial file ``tmp_path / "p"`` that a download writes into."""
    fd = os.open(tmp_path / "p", os.O_RDWR | os.O_CREAT, 0o600)
    yield fd
    os.close(fd)


def body(us: BatchedTLSStream, remaining: int, buffered: list[bytes] | None = None) -> DirectBody:
    return DirectBody(us.raw(), buffered or [], remaining, read_timeout=20)


async def test_a_body_lands_whole_hashed_and_at_its_offset(
    tls_pair: tuple[trio.SSLStream[Any], BatchedTLSStream], tmp_path: Path, partial: int
) -> None:
    member, us = tls_pair
    data = os.urandom(3 * MIB + 5)
    os.pwrite(partial, data[:7], 0)  # a resume from byte 7
    digest = hashlib.sha256(data[:7])
    # What the HTTP layer had buffered past the head comes first.
    buffered, rest = data[7:1000], data[1000:]
    progress: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(member.send_all, rest)
        await receive_direct(
            body(us, len(rest), [buffered]), partial, 7, digest, on_chunk=progress.append
        )
    assert (tmp_path / "p").read_bytes() == data
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert sum(progress) == len(data) - 7


async def test_cancel_ends_it_within_a_second_while_the_member_is_silent(
    tls_pair: tuple[trio.SSLStream[Any], BatchedTLSStream], tmp_path: Path, partial: int
) -> None:
    member, us = tls_pair
    arrived = trio.Event()
    received = 0

    def on_chunk(count: int) -> None:
        nonlocal received
        received += count
        if received >= MIB:
            arrived.set()

    async with trio.open_nursery() as nursery:

        async def cancel_once_it_stalls() -> None:
            await arrived.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(cancel_once_it_stalls)
        nursery.start_soon(member.send_all, os.urandom(MIB))  # of 4, then silence
        started = time.monotonic()
        await receive_direct(body(us, 4 * MIB), partial, 0, hashlib.sha256(), on_chunk=on_chunk)
    assert nursery.cancel_scope.cancelled_caught
    assert time.monotonic() - started < 2  # 1 MiB, then at most a poll slice after the cancel
    assert (tmp_path / "p").stat().st_size == MIB  # whole blocks only: a clean prefix


async def test_the_threads_take_none_of_the_daemons_shared_ones(
    tls_pair: tuple[trio.SSLStream[Any], BatchedTLSStream], tmp_path: Path, partial: int
) -> None:
    """Every shared worker thread busy (uploads, history): a download still runs."""
    member, us = tls_pair
    shared = trio.to_thread.current_default_thread_limiter()
    shared.total_tokens = 1
    async with shared, trio.open_nursery() as nursery:
        nursery.start_soon(member.send_all, b"x" * 2 * MIB)
        with trio.fail_after(30):
            await receive_direct(
                body(us, 2 * MIB), partial, 0, hashlib.sha256(), on_chunk=lambda n: None
            )
    assert (tmp_path / "p").read_bytes() == b"x" * 2 * MIB


async def test_an_error_from_the_progress_check_ends_it_with_that_error(
    tls_pair: tuple[trio.SSLStream[Any], BatchedTLSStream], tmp_path: Path, partial: int
) -> None:
    member, us = tls_pair

    def too_slow(count: int) -> None:
        raise ValueError("sent too little in 60 s")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(member.send_all, b"x" * MIB)
        with pytest.raises(ValueError, match="too little"):
            await receive_direct(body(us, 4 * MIB), partial, 0, hashlib.sha256(), on_chunk=too_slow)
        nursery.cancel_scope.cancel()


async def test_a_member_that_closes_mid_body_is_a_cut(
    tls_pair: tuple[trio.SSLStream[Any], BatchedTLSStream], tmp_path: Path, partial: int
) -> None:
    member, us = tls_pair

    async def send_then_cut() -> None:
        await member.send_all(b"x" * MIB)
        await trio.aclose_forcefully(member.transport_stream)  # no close_notify: a cut

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_then_cut)
        with pytest.raises(BodyCut, match="mid-answer"):
            await receive_direct(
                body(us, 4 * MIB), partial, 0, hashlib.sha256(), on_chunk=lambda n: None
            )


async def test_an_upload_to_a_client_that_stops_reading_ends(
    tls_pair: tuple[trio.SSLStream[Any], BatchedTLSStream], tmp_path: Path
) -> None:
    """Our side sends here (the member's end never reads): cut after the stall limit."""
    _, us = tls_pair
    source = tmp_path / "file"
    source.write_bytes(os.urandom(32 * MIB))
    fd = os.open(source, os.O_RDONLY)
    try:
        started = time.monotonic()
        with pytest.raises(BodyCut, match="read less than"):
            await send_direct(us.raw(), fd, 0, 32 * MIB, stall_limit=0.5, on_sent=lambda n: None)
    finally:
        os.close(fd)
    assert time.monotonic() - started < 5


async def test_an_upload_sends_the_range_asked_for(
    tls_pair: tuple[trio.SSLStream[Any], BatchedTLSStream], tmp_path: Path
) -> None:
    member, us = tls_pair
    data = os.urandom(3 * MIB)
    source = tmp_path / "file"
    source.write_bytes(data)
    got = bytearray()
    sent: list[int] = []

    async def read_all() -> None:
        while len(got) < len(data) - 12345:
            got.extend(await member.receive_some(MIB))

    fd = os.open(source, os.O_RDONLY)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await send_direct(
                us.raw(), fd, 12345, len(data) - 12345, stall_limit=10, on_sent=sent.append
            )
    finally:
        os.close(fd)
    assert bytes(got) == data[12345:] and sum(sent) == len(data) - 12345
