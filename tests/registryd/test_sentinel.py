"""Redis Sentinel: registryd follows a failover of its Redis with a short 503 window.

Real processes: a primary, its replica and a sentinel (``redis-server
--sentinel``) on free ports, and registryd as the CLI starts it, on a
``redis+sentinel://`` URL.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
import trio
import trustme

from p2pcommon.lifecycle import ConfigError
from p2pcommon.registry_client import RegistryClient, RegistryUnavailable
from p2pcommon.settings import load_settings
from p2pcommon.signing.signer import Signer
from registryd.config import RegistrySettings
from registryd.redis_connect import EXAMPLE, describe, parse_sentinel_url
from registryd.redis_store import EXPIRY, RedisStore
from registryd.store import StoreError
from tests.redis_process import RedisProcess, SentinelProcess
from tests.support import (
    SECRET,
    VENV_BIN,
    Peer,
    RunningRegistry,
    free_port,
    run_registryd,
    wait_until,
)

SERVICE = "p2p"
#: Generous: a failover takes about 2 s here, but the machine may be busy.
FAILOVER_LIMIT = 60.0


@dataclass
class Cluster:
    primary: RedisProcess
    replica: RedisProcess
    sentinel: SentinelProcess

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{SERVICE}"

    def sentinel_client(self) -> redis.Redis:
        return redis.Redis(port=self.sentinel.port, decode_responses=True)


def poll(check: Callable[[], bool], what: str, limit: float = 15) -> None:
    """Poll a real process's state (a sync fixture has no trio loop to wait on)."""
    deadline = time.monotonic() + limit
    while True:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit} s waiting for {what}")
        time.sleep(0.02)


def start_cluster(stack: ExitStack, workdir: Path, primary_args: Sequence[str] = ()) -> Cluster:
    """A primary, its replica and a sentinel; ``stack`` kills them, whatever fails."""
    primary = RedisProcess(workdir, extra_args=primary_args)
    stack.callback(primary.stop)
    primary.start()
    replica = RedisProcess(workdir, replica_of=primary.port)
    stack.callback(replica.stop)
    replica.start()
    sentinel = SentinelProcess(workdir, primary.port, service=SERVICE, replica_ports=[replica.port])
    stack.callback(sentinel.stop)
    sentinel.start()
    cluster = Cluster(primary, replica, sentinel)
    watcher = stack.enter_context(cluster.sentinel_client())

    def replica_ready() -> bool:
        # The sentinel can promote only a replica it has seen in sync.
        replicas = watcher.sentinel_slaves(SERVICE)
        return [(r["port"], r["flags"], r["master-link-status"]) for r in replicas] == [
            (replica.port, "slave", "ok")
        ]

    poll(replica_ready, "the sentinel to see the replica in sync")
    return cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with ExitStack() as stack:
        yield start_cluster(stack, tmp_path)


@pytest.fixture
def cut_off_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """The primary ignores the sentinels' SLAVEOF: once failed over it stays a primary,
    as one cut off from the sentinels (not from the registries) by a partition."""
    renamed = ["--rename-command", "SLAVEOF", "", "--rename-command", "REPLICAOF", ""]
    with ExitStack() as stack:
        yield start_cluster(stack, tmp_path, renamed)


async def signed_clients(http: httpx.AsyncClient, registry: RunningRegistry) -> httpx.Response:
    headers, _ = Signer(SECRET).sign_request("GET", "/clients", b"", now=time.time())
    return await http.get(registry.url + "/clients", headers=headers)


async def answers_until_all_serve(registries: list[RunningRegistry]) -> list[int]:
    """Poll GET /clients on each registry until all answer 200; every status seen."""
    seen: list[int] = []
    async with httpx.AsyncClient(timeout=30) as http:
        with trio.move_on_after(FAILOVER_LIMIT):
            while True:
                serving = 0
                for registry in registries:
                    started = time.monotonic()
                    response = await signed_clients(http, registry)
                    # Fail fast: one attempt at Redis, never a hang until the failover ends.
                    assert time.monotonic() - started < 10
                    seen.append(response.status_code)
                    if response.status_code == 503:
                        assert int(response.headers["Retry-After"]) > 0
                        assert response.json()["error"] == "store unavailable"
                    else:
                        assert response.status_code == 200, response.text
                        serving += 1
                if serving == len(registries):
                    return seen
                await trio.sleep(0.05)
    raise AssertionError(f"the registries did not serve again within {FAILOVER_LIMIT} s: {seen}")


async def test_a_killed_primary_is_a_short_503_window_and_no_member_is_lost(
    tmp_path: Path, cluster: Cluster
) -> None:
    env = {"REGISTRYD_STORE": cluster.url}
    peers = [Peer.new(f"peer{i}") for i in range(4)]
    with run_registryd(tmp_path, env) as a, run_registryd(tmp_path, env) as b:
        async with (
            RegistryClient([a.url], SECRET) as via_a,
            RegistryClient([b.url], SECRET) as via_b,
        ):
            leases = {}
            for i, peer in enumerate(peers):
                via = via_a if i % 2 else via_b
                leases[peer.id] = (
                    await via.register(peer.registration(7000 + i), peer.prove)
                ).lease
            with redis.Redis(port=cluster.primary.port) as primary:
                assert primary.wait(1, 10_000) == 1  # the replica holds every member

            cluster.primary.kill()
            seen = await answers_until_all_serve([a, b])
            assert 503 in seen  # the window was there, and it was answered, not hung

            with cluster.sentinel_client() as watcher:
                assert watcher.sentinel_get_master_addr_by_name(SERVICE)[1] == cluster.replica.port
            everyone = {peer.id for peer in peers}
            assert {m.id for m in await via_a.clients()} == everyone
            assert {m.id for m in await via_b.clients()} == everyone
            newcomer = Peer.new("newcomer")
            leases[newcomer.id] = (
                await via_a.register(newcomer.registration(1), newcomer.prove)
            ).lease
            for peer in [*peers, newcomer]:  # every pooled connection is on the new primary
                await via_a.heartbeat(peer.id, leases[peer.id])
                await via_b.heartbeat(peer.id, leases[peer.id])
            # A page is read from the store (the whole list may be a second old).
            assert {m.id for m in (await via_b.members_page())[0]} == everyone | {newcomer.id}
    for registry in (a, b):
        log = registry.log()
        assert f"store {cluster.url} unavailable" in log
        assert re.search(r"store \S+ reachable again after [\d.]+ s", log), log


async def test_after_a_switch_writes_leave_an_old_primary_that_still_answers(
    tmp_path: Path, cut_off_cluster: Cluster
) -> None:
    """Writes to an old primary are lost when it is demoted (by the sentinels, 10 s or
    more after the switch, or never if they cannot reach it): the registry moves on its own."""
    cluster = cut_off_cluster
    with run_registryd(tmp_path, {"REGISTRYD_STORE": cluster.url}) as registry:
        async with RegistryClient([registry.url], SECRET) as client:
            first = Peer.new("first")
            await client.register(first.registration(1), first.prove)
            with redis.Redis(port=cluster.primary.port) as primary:
                assert primary.wait(1, 10_000) == 1
            with cluster.sentinel_client() as watcher:
                assert watcher.sentinel_failover(SERVICE)

                async def switched_to_the_replica() -> bool:
                    address = watcher.sentinel_get_master_addr_by_name(SERVICE)
                    return bool(address[1] == cluster.replica.port)

                await wait_until(switched_to_the_replica, what="the sentinel to name the replica")
            switched = time.monotonic()
            with redis.Redis(port=cluster.replica.port, decode_responses=True) as new_primary:
                while True:
                    late = Peer.new("late")
                    with contextlib.suppress(RegistryUnavailable):  # a 503 while it moves
                        await client.register(late.registration(1), late.prove)
                    if new_primary.zscore(EXPIRY, late.id) is not None:
                        break
                    # The registry asks the sentinels once a second.
                    assert time.monotonic() - switched < 15, "still writing to the old primary"
                    await trio.sleep(0.05)
            assert {first.id, late.id} <= {m.id for m in (await client.members_page())[0]}


def test_credentials_and_tls_reach_the_right_servers(tmp_path: Path) -> None:
    """The URL's password is Redis's; ``sentinel_password`` is the sentinels'; both over TLS."""
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    ca_path, cert_path, key_path = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    server_cert.cert_chain_pems[0].write_to_path(str(cert_path))
    server_cert.private_key_pem.write_to_path(str(key_path))
    tls = {
        "tls-cert-file": str(cert_path),
        "tls-key-file": str(key_path),
        "tls-ca-cert-file": str(ca_path),
        "tls-auth-clients": "no",
    }
    primary_tls_port = free_port()
    primary = RedisProcess(
        tmp_path,
        extra_args=["--requirepass", "redis-pw", "--tls-port", str(primary_tls_port)]
        + [arg for key, value in tls.items() for arg in (f"--{key}", value)],
    )
    sentinel_tls_port = free_port()
    sentinel = SentinelProcess(
        tmp_path,
        primary_tls_port,
        service=SERVICE,
        extra_config=[
            f"tls-port {sentinel_tls_port}",
            "tls-replication yes",  # the sentinel speaks TLS to Redis too
            "requirepass sentinel-pw",
            f"sentinel auth-pass {SERVICE} redis-pw",
            *(f"{key} {value}" for key, value in tls.items()),
        ],
    )
    base = f"rediss+sentinel://:redis-pw@127.0.0.1:{sentinel_tls_port}/{SERVICE}"
    options = f"ssl_ca_certs={ca_path}"
    with ExitStack() as stack:
        stack.callback(primary.stop)
        primary.start()
        stack.callback(sentinel.stop)
        sentinel.start()

        async def use(url: str) -> None:
            store = RedisStore(url)
            try:
                peer = Peer.new()
                now = time.time()
                await store.register(peer.id, "n", peer.cert, (), now, ttl=30, lease_hash="5e" * 32)
                assert [e.id for e in await store.members(time.time())] == [peer.id]
            finally:
                await store.aclose()

        trio.run(use, f"{base}?{options}&sentinel_password=sentinel-pw")
        with pytest.raises(StoreError, match="No master found"):
            trio.run(use, f"{base}?{options}")  # the sentinel wants its own password
        wrong = base.replace("redis-pw", "sentinel-pw")
        with pytest.raises(StoreError, match="WRONGPASS|invalid"):
            trio.run(use, f"{wrong}?{options}&sentinel_password=sentinel-pw")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+sentinel://127.0.0.1:26379", "the service name is missing"),
        ("redis+sentinel:///p2p", "no sentinel address"),
        ("redis+sentinel://a:26379,b:port/p2p", "'b:port': the port must be a number"),
        ("redis+sentinel://a:26379/p2p/zero", "only a database number"),
        ("redis+sentinel://a:26379/p2p?ssl_ca_certs=/ca.pem", "need rediss\\+sentinel://"),
        ("redis+sentinel://a:26379/p2p?sentinel_pasword=x", "unknown option 'sentinel_pasword'"),
        ("sentinel://a:26379/p2p", "must be 'memory' or a Redis URL"),
    ],
)
def test_a_bad_store_url_names_the_key_and_the_fault(
    monkeypatch: pytest.MonkeyPatch, url: str, reason: str
) -> None:
    monkeypatch.setenv("REGISTRYD_STORE", url)
    with pytest.raises(ConfigError, match=f"REGISTRYD_STORE: key 'store': .*{reason}") as caught:
        load_settings(RegistrySettings, explicit_path=None, default_path="/nonexistent")
    assert EXAMPLE in str(caught.value)  # an example to copy


def test_registryd_refuses_to_start_on_a_bad_sentinel_url_without_showing_passwords(
    tmp_path: Path,
) -> None:
    config = tmp_path / "registryd.toml"
    url = "redis+sentinel://s1:26379,s2:x/p2p?sentinel_password=sentinel-pw"
    config.write_text(f'secret = "0123456789abcdef"\nstore = "{url}"\n')
    result = subprocess.run(
        [str(VENV_BIN / "registryd"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "key 'store'" in result.stderr
    assert "'s2:x'" in result.stderr
    assert "sentinel-pw" not in result.stderr


@pytest.mark.parametrize("password", ["xq7/zk9", "xq7?zk9", "xq7%2Fzk9/zk9"])
def test_a_password_with_a_raw_slash_or_question_mark_is_never_shown(
    monkeypatch: pytest.MonkeyPatch, password: str
) -> None:
    monkeypatch.setenv("REGISTRYD_STORE", f"redis+sentinel://:{password}@s1:26379/p2p")
    with pytest.raises(ConfigError, match="percent-encode") as caught:
        load_settings(RegistrySettings, explicit_path=None, default_path="/nonexistent")
    for fragment in ("xq7", "zk9"):
        assert fragment not in str(caught.value)


def test_the_url_forms() -> None:
    target = parse_sentinel_url(
        "redis+sentinel://user:p%40ss@s1:26380,[::1]:26381,s3/p2p/2?sentinel_password=spw"
    )
    assert target.sentinels == (("s1", 26380), ("::1", 26381), ("s3", 26379))
    assert (target.service, target.db, target.tls) == ("p2p", 2, False)
    assert (target.username, target.password) == ("user", "p@ss")
    assert (target.sentinel_username, target.sentinel_password) == (None, "spw")
    assert "p@ss" not in repr(target) and "spw" not in repr(target)
    shown = describe("redis+sentinel://:pw@s1:26380,[::1]:26381/p2p?sentinel_password=spw")
    assert shown == "redis+sentinel://s1:26380,[::1]:26381/p2p"
