"""The registry client: failover across registries, lookups, and answers it must not trust."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio

from p2pcommon.backoff import Backoff
from p2pcommon.http.events import Body, Request, Response, json_response
from p2pcommon.http.server import HttpServer
from p2pcommon.registry_client import InvalidAnswer, RegistryClient, RegistryUnavailable
from p2pcommon.signing.signer import Signer
from tests.support import SECRET, Peer, RunningRegistry, free_port, run_registryd


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    with run_registryd(tmp_path) as running:
        yield running


async def register(client: RegistryClient, peer: Peer) -> None:
    await client.register(peer.registration(), peer.prove)


async def test_fails_over_from_a_dead_registry_and_sticks_to_the_live_one(
    registry: RunningRegistry,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with RegistryClient([dead, registry.url], SECRET) as client:
        await register(client, Peer.new())
        assert client.current_url == registry.url
        assert len(await client.clients()) == 1


async def test_a_registry_with_another_secret_is_skipped(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    with run_registryd(tmp_path, {"REGISTRYD_SECRET": "a-different-network"}) as foreign:
        async with RegistryClient([foreign.url, registry.url], SECRET) as client:
            await register(client, Peer.new())
            assert client.current_url == registry.url


async def test_unsigned_answers_are_ignored(registry: RunningRegistry) -> None:
    async def impostor(request: Request) -> Response:
        return json_response(200, {"clients": []})

    server = HttpServer(impostor)
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(server.run, listeners)
        port = listeners[0].socket.getsockname()[1]
        impostor_url = f"http://127.0.0.1:{port}"
        async with RegistryClient([impostor_url], SECRET) as alone:
            with pytest.raises(RegistryUnavailable, match="not signed with our secret"):
                await alone.clients()
        async with RegistryClient([impostor_url, registry.url], SECRET) as client:
            await register(client, Peer.new())
            assert [m.name for m in await client.clients()] == ["alice"]
        await server.shutdown(1)


async def test_all_down_reports_every_registry_after_backing_off() -> None:
    urls = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    backoff = Backoff(base=0.01, cap=0.02, rng=random.Random(7))
    async with RegistryClient(urls, SECRET, backoff=backoff) as client:
        with pytest.raises(RegistryUnavailable) as caught:
            await client.clients(rounds=3)
    assert len(caught.value.failures) == 2
    assert all(url in str(caught.value) for url in urls)
    assert backoff.attempt == 2  # slept between the three rounds


def test_backoff_is_full_jitter_under_a_doubling_ceiling() -> None:
    backoff = Backoff(base=0.5, cap=8.0, rng=random.Random(1))
    ceilings = []
    for _ in range(8):
        ceiling = backoff.ceiling()
        assert 0 <= backoff.next_delay() <= ceiling
        ceilings.append(ceiling)
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.ceiling() == 0.5
    delays = [Backoff(base=1, cap=1, rng=random.Random(s)).next_delay() for s in range(50)]
    assert min(delays) < 0.2 and max(delays) > 0.8  # spread over the whole range


async def test_an_endless_or_trickling_answer_fails_over_in_bounded_time() -> None:
    """Whatever answers at a registry URL cannot hold a peer with a never-ending body."""

    class Endless(Body):
        def __aiter__(self) -> Endless:
            return self

        async def __anext__(self) -> bytes:
            await trio.sleep(0.05)  # each read is quick: only a whole-exchange deadline helps
            return b"x" * 1024

    async def trickle(request: Request) -> Response:
        # Within the size cap: only the deadline stops it.
        return Response(200, stream=Endless(), length=64 << 20)

    server = HttpServer(trickle)
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(server.run, listeners)
        url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        async with RegistryClient([url], SECRET, timeout=0.5) as client:
            with trio.fail_after(30), pytest.raises(RegistryUnavailable, match="no whole answer"):
                await client.clients()
        nursery.cancel_scope.cancel()


# -- lookups ---------------------------------------------------------------------


async def test_lookups_resolutions_and_pages(registry: RunningRegistry) -> None:
    peers = [Peer.new(name) for name in ("alice", "bob", "Zoë & co", "bob")]
    async with RegistryClient([registry.url], SECRET) as client:
        for peer in peers:
            await register(client, peer)
        alice = await client.member(peers[0].id)
        assert alice is not None and (alice.name, alice.cert) == ("alice", peers[0].cert)
        assert await client.member("a" * 52) is None
        with pytest.raises(ValueError, match="not a peer id"):
            await client.member("alice")
        bobs, more = await client.resolve("bob")
        assert ([m.id for m in bobs], more) == (sorted([peers[1].id, peers[3].id]), False)
        assert [m.name for m in (await client.resolve("Zoë & co"))[0]] == ["Zoë & co"]
        assert [m.name for m in (await client.resolve(peers[0].id[:8].upper()))[0]] == ["alice"]
        walked, after = [], None
        while True:
            page, after = await client.members_page(after, 3, certs=False)
            walked += page
            if after is None:
                break
        assert [m.id for m in walked] == sorted(p.id for p in peers)
        assert all(m.cert == "" for m in walked)
        assert (await client.members_page(limit=5000))[0][0].cert == min(
            peers, key=lambda p: p.id
        ).cert


def forger(answer: object) -> Callable[[Request], Awaitable[Response]]:
    """A registry holding the secret that signs whatever ``answer`` is, whatever was asked."""
    signer = Signer(SECRET)

    async def handle(request: Request) -> Response:
        verified = signer.verify_request(
            request.method, request.target, request.headers, request.body, now=time.time()
        )
        body = json.dumps(answer).encode()
        headers = signer.sign_response(200, body, nonce=verified.nonce, now=time.time())
        return Response(200, body, list(headers.items()))

    return handle


def record(member_id: str) -> dict[str, object]:
    return {"id": member_id, "name": "n", "addresses": [], "last_seen": 0}


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"members": [], "next": None, "after": "b", "limit": 10, "certs": 0}, "after="),
        ({"members": [], "next": None, "after": None, "limit": 1000, "certs": 0}, "limit="),
        ({"members": [], "next": None, "after": None, "limit": 10, "certs": 1}, "certs="),
        (
            {
                "members": [record("c" * 52), record("b" * 52)],
                "next": None,
                "after": None,
                "limit": 10,
                "certs": 0,
            },
            "sorted",
        ),
        (
            {
                "members": [record("c" * 52)],
                "next": "b" * 52,
                "after": None,
                "limit": 10,
                "certs": 0,
            },
            "go on before",
        ),
    ],
)
async def test_a_page_must_answer_the_query_asked(answer: object, reason: str) -> None:
    """The signature covers the path, not the query: the echo ties the page to it."""
    server = HttpServer(forger(answer))
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(server.run, listeners)
        url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        async with RegistryClient([url], SECRET) as client:
            with pytest.raises(InvalidAnswer, match=reason):
                await client.members_page(None, 10, certs=False)
        nursery.cancel_scope.cancel()


async def test_a_lookup_or_resolution_of_something_else_is_refused() -> None:
    other = record("b" * 52) | {"cert": "PEM"}
    async with trio.open_nursery() as nursery:
        urls = []
        for answer in (other, {"query": "mallory", "members": [other], "more": False}):
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            await nursery.start(HttpServer(forger(answer)).run, listeners)
            urls.append(f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}")
        async with RegistryClient([urls[0]], SECRET) as client:
            with pytest.raises(InvalidAnswer, match="answered member"):
                await client.member("a" * 52)
        async with RegistryClient([urls[1]], SECRET) as client:
            with pytest.raises(InvalidAnswer, match="resolved 'mallory'"):
                await client.resolve("alice")
        nursery.cancel_scope.cancel()
