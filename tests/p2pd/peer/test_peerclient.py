"""The downloader's errors say what happened, in the user's terms.

Each cause is made as it happens on a network: a port nobody listens on, a
server that is not TLS, a TLS server with another certificate, one that
never answers; only "no route" needs a network this machine does not have.
"""

from __future__ import annotations

import errno
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from p2pcommon.models import Member
from p2pd.peer.client import CONNECT_TIMEOUT, PeerPool, PeerUnreachable
from p2pd.peer.reach import failure_reason, unreachable_message
from p2pd.tls.identity import Identity, load_or_create
from tests.hostile.attacker import Attacker
from tests.hostile.fake_member import FakeMember
from tests.support import Peer, free_port

BOB = Peer.new("bob")


def bob_at(*addresses: str) -> Member:
    return Member(id=BOB.id, name="bob", addresses=list(addresses), cert=BOB.cert, last_seen=0.0)


async def why_unreachable(identity: Identity, member: Member) -> str:
    pool = PeerPool(identity)
    try:
        with pytest.raises(PeerUnreachable) as caught:
            await pool.listing(member)
    finally:
        await pool.aclose()
    return str(caught.value)


@pytest.fixture
def identity(tmp_path: Path) -> Identity:
    return load_or_create(tmp_path / "alice")[0]


async def test_a_refused_connection_is_said_in_words(identity: Identity) -> None:
    address = f"127.0.0.1:{free_port()}"
    message = await why_unreachable(identity, bob_at(address))
    assert message == (
        f"bob is registered but cannot be reached at {address} (connection refused): "
        "is its p2pd running? a firewall?"
    )


async def test_a_server_that_speaks_no_tls_is_a_failed_handshake(identity: Identity) -> None:
    async def plain_http(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(partial(trio.serve_tcp, plain_http, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        message = await why_unreachable(identity, bob_at(f"127.0.0.1:{port}"))
        nursery.cancel_scope.cancel()
    assert message.startswith(f"bob is registered but cannot be reached at 127.0.0.1:{port} ")
    assert "(TLS handshake failed: " in message
    assert message.endswith("is it a p2pd of this network (same secret, a recent version)?")


async def test_another_certificate_at_the_address_is_named_so(
    identity: Identity, tmp_path: Path
) -> None:
    mallory = Attacker.new(tmp_path / "mallory")
    with FakeMember(mallory, [identity.cert_pem], {}) as impostor:
        address = f"127.0.0.1:{impostor.port}"
        message = await why_unreachable(identity, bob_at(address))
    assert message == (
        f"bob is registered but cannot be reached at {address} (it presented a certificate "
        "that is not this member's; certificate verify failed: self-signed certificate): "
        "is the address out of date (another program or p2pd answers there)?"
    )


async def test_silence_is_a_timeout_and_every_address_is_told(
    identity: Identity, autojump_clock: trio.testing.MockClock
) -> None:
    # Listening, never accepting: the kernel completes the TCP handshake, then nothing.
    silent = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    silent_address = f"127.0.0.1:{silent.socket.getsockname()[1]}"
    closed_address = f"127.0.0.1:{free_port()}"
    async with silent:
        message = await why_unreachable(identity, bob_at(silent_address, closed_address))
    assert message == (
        "bob is registered but cannot be reached at any of its addresses: "
        f"{silent_address} (no answer within {CONNECT_TIMEOUT:g} s); "
        f"{closed_address} (connection refused): "
        "is the host up? a firewall? is its p2pd running?"
    )


@pytest.mark.parametrize(
    ("code", "said", "hint"),
    [
        (errno.EHOSTUNREACH, "no route to host", "is the host up, and the address right?"),
        (errno.ENETUNREACH, "network unreachable", "is the address right for this network?"),
        (errno.ECONNRESET, "connection reset", "a firewall? is it a p2pd?"),
    ],
)
def test_routing_errors_are_said_in_words(code: int, said: str, hint: str) -> None:
    # As trio raises them: the socket's error inside the group of every attempt.
    attempt = OSError(code, f"Error connecting to ('192.0.2.1', 7070): {said}")
    failed = OSError("all attempts to connect to 192.0.2.1:7070 failed")
    failed.__cause__ = ExceptionGroup("attempts", [attempt])
    assert failure_reason(failed, 5) == (said, hint)
    assert unreachable_message("bob", [("192.0.2.1:7070", failed)], 5) == (
        f"bob is registered but cannot be reached at 192.0.2.1:7070 ({said}): {hint}"
    )


def test_a_member_without_an_address_is_said_so() -> None:
    assert unreachable_message("bob", [], 5) == (
        "bob is registered without any address: it cannot be reached"
    )
