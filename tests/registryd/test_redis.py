"""Several registryd instances sharing one view through a real redis-server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from p2pcommon.registry_client import RegistryClient, UnknownMember
from p2pcommon.signing.signer import Signer
from tests.redis_process import running_redis
from tests.support import SECRET, Peer, run_registryd, wait_until


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with running_redis(tmp_path) as url:
        yield url


async def test_two_instances_share_members(tmp_path: Path, redis_url: str) -> None:
    env = {"REGISTRYD_STORE": redis_url}
    alice = Peer.new("alice")
    with run_registryd(tmp_path, env) as a, run_registryd(tmp_path, env) as b:
        async with (
            RegistryClient([a.url], SECRET) as via_a,
            RegistryClient([b.url], SECRET) as via_b,
        ):
            lease = await via_a.register(alice.registration(), alice.prove)
            (member,) = await via_b.clients()
            assert (member.id, member.addresses, member.cert) == (
                alice.id,
                ["127.0.0.1:7070"],
                alice.cert,
            )
            await via_b.heartbeat(alice.id, lease.lease)  # the lease is shared, in Redis
            await via_b.leave(alice.id, lease.lease)
            assert await via_a.clients() == []
            with pytest.raises(UnknownMember):
                await via_a.heartbeat(alice.id, lease.lease)
        assert "store: redis://127.0.0.1" in a.log()


def test_a_request_replayed_to_another_instance_is_refused(tmp_path: Path, redis_url: str) -> None:
    env = {"REGISTRYD_STORE": redis_url}
    with run_registryd(tmp_path, env) as a, run_registryd(tmp_path, env) as b:
        headers, _ = Signer(SECRET).sign_request("GET", "/clients", b"", now=time.time())
        assert httpx.get(a.url + "/clients", headers=headers).status_code == 200
        replay = httpx.get(b.url + "/clients", headers=headers)
        assert replay.status_code == 401
        assert replay.json()["error"] == "replayed"


async def test_expiry_is_shared_and_counted_once(tmp_path: Path, redis_url: str) -> None:
    env = {"REGISTRYD_STORE": redis_url, "REGISTRYD_PEER_TTL": "0.6"}
    peer = Peer.new()
    with run_registryd(tmp_path, env) as a, run_registryd(tmp_path, env) as b:
        async with RegistryClient([a.url, b.url], SECRET) as client:
            await client.register(peer.registration(1), peer.prove)

            async def both_counted_one() -> bool:
                total = 0.0
                async with httpx.AsyncClient() as http:
                    for registry in (a, b):
                        text = (await http.get(registry.url + "/metrics")).text
                        for line in text.splitlines():
                            if line.startswith("registry_expiries_total"):
                                total += float(line.split()[1])
                return total == 1.0

            await wait_until(both_counted_one, what="one expiry counted over both instances")
            assert await client.clients() == []


async def test_peers_fail_over_when_an_instance_stops(tmp_path: Path, redis_url: str) -> None:
    env = {"REGISTRYD_STORE": redis_url}
    peer = Peer.new()
    with run_registryd(tmp_path, env) as a, run_registryd(tmp_path, env) as b:
        async with RegistryClient([a.url, b.url], SECRET) as client:
            lease = await client.register(peer.registration(1), peer.prove)
            assert client.current_url == a.url
            assert a.stop() == 0
            await client.heartbeat(peer.id, lease.lease)
            assert client.current_url == b.url
            assert [m.id for m in await client.clients()] == [peer.id]
    assert json.dumps(SECRET) not in a.log()
