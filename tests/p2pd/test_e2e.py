"""Real registryd + two real p2pd + the real p2pctl, all as subprocesses on loopback."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from p2pcommon.models import Member, RegisterRequest
from p2pcommon.registry_client import RegistryClient
from p2pd.main import main
from p2pd.membership.link import KeySigner
from p2pd.peer.client import PeerConnection, PeerPool, PeerUnreachable
from p2pd.tls.identity import Identity, load_or_create
from tests.p2pd.test_config_identity import write_config
from tests.support import (
    SECRET,
    RunningPeer,
    RunningRegistry,
    run_p2pd,
    run_registryd,
    wait_until,
)

FAST = "heartbeat_interval = 0.5\n"


@dataclass
class Network:
    registry: RunningRegistry
    alice: RunningPeer
    bob: RunningPeer


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    with run_registryd(tmp_path, {"REGISTRYD_PEER_TTL": "3"}) as registry:
        urls = [registry.url]
        bob_share = tmp_path / "bob" / "share"
        (bob_share / "docs" / "deep").mkdir(parents=True)
        (bob_share / "hello.txt").write_bytes(b"hello from bob\n")
        (bob_share / "docs" / "deep" / "nested.bin").write_bytes(os.urandom(300_000))
        (bob_share / "Grüße – ☃.txt").write_bytes(b"non-ASCII name\n")
        (bob_share / "empty").write_bytes(b"")
        (bob_share / ".hidden").write_bytes(b"secret")
        (tmp_path / "outside.txt").write_bytes(b"outside the share")
        (bob_share / "escape").symlink_to(tmp_path / "outside.txt")
        with (
            run_p2pd(tmp_path, "alice", urls, extra_config=FAST) as alice,
            run_p2pd(tmp_path, "bob", urls, extra_config=FAST) as bob,
        ):
            yield Network(registry, alice, bob)


async def peers_of(peer: RunningPeer) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = await peer.actl_json("peers")
    return result


async def wait_for_peer(peer: RunningPeer, name: str) -> None:
    async def sees() -> bool:
        return name in [p["name"] for p in await peers_of(peer)]

    await wait_until(sees, what=f"{peer.name} to see {name}")


async def meet(*peers: RunningPeer) -> None:
    """Wait until every peer lists every other (each admits the others' certificates)."""
    for peer in peers:
        for other in peers:
            if other is not peer:
                await wait_for_peer(peer, other.name)


async def listing(peer: RunningPeer, other: str) -> dict[str, str]:
    entries: list[dict[str, Any]] = await peer.actl_json("ls", other)
    return {e["path"]: e["sha256"] for e in entries}


async def test_peers_see_each_other_and_list_files_with_hashes(network: Network) -> None:
    alice, bob = network.alice, network.bob
    await wait_for_peer(alice, "bob")
    await wait_for_peer(bob, "alice")
    (bob_entry,) = await peers_of(alice)
    status = await bob.actl_json("status")
    assert bob_entry["id"] == status["id"]
    assert bob_entry["addresses"] == [f"127.0.0.1:{bob.port}"]
    files = await listing(alice, "bob")
    share = bob.share_dir
    assert files == {
        "hello.txt": sha256((share / "hello.txt").read_bytes()),
        "docs/deep/nested.bin": sha256((share / "docs/deep/nested.bin").read_bytes()),
        "Grüße – ☃.txt": sha256((share / "Grüße – ☃.txt").read_bytes()),
        "empty": sha256(b""),
    }
    # By short id prefix too, and the shape of §5.
    entries = await alice.actl_json("ls", status["id"][:7])
    assert {"path", "size", "sha256"} <= set(entries[0])
    shared = await bob.actl_json("shared")
    assert sorted(e["path"] for e in shared) == sorted(files)


async def test_status_has_the_fields_of_the_contract(network: Network) -> None:
    await wait_for_peer(network.alice, "bob")
    status = await network.alice.actl_json("status")
    assert status["name"] == "alice"
    assert status["registered"] is True
    assert status["listen"] == f"127.0.0.1:{network.alice.port}"
    assert status["shared_files"] == 0
    assert isinstance(status["version"], str)
    assert len(status["id"]) == 52


async def test_changes_show_up_in_the_other_peers_listing(network: Network) -> None:
    alice, bob = network.alice, network.bob
    await wait_for_peer(alice, "bob")

    async def shows(path: str, digest: str | None) -> None:
        async def check() -> bool:
            return (await listing(alice, "bob")).get(path) == digest

        await wait_until(check, what=f"{path} to be {digest} in alice's ls bob")

    (bob.share_dir / "new.txt").write_bytes(b"brand new")
    await shows("new.txt", sha256(b"brand new"))
    (bob.share_dir / "new.txt").write_bytes(b"changed content")
    await shows("new.txt", sha256(b"changed content"))
    (bob.share_dir / "new.txt").unlink()
    await shows("new.txt", None)


async def test_a_stopped_peer_disappears(network: Network) -> None:
    await wait_for_peer(network.alice, "bob")
    assert network.bob.stop() == 0
    assert "left the registry" in network.bob.log()

    async def gone() -> bool:
        return await peers_of(network.alice) == []

    await wait_until(gone, what="bob to vanish from alice's peers")
    failed = network.alice.ctl("ls", "bob")
    assert failed.returncode == 1
    assert "bob" in failed.stderr


def outsider_member(peer: RunningPeer, status: dict[str, Any]) -> Member:
    cert = (peer.state_dir / "identity.crt").read_text()
    return Member(
        id=status["id"],
        name=peer.name,
        addresses=[f"127.0.0.1:{peer.port}"],
        cert=cert,
        last_seen=0,
    )


async def test_an_unregistered_certificate_is_refused(network: Network, tmp_path: Path) -> None:
    stranger, _ = load_or_create(tmp_path / "stranger")
    bob = network.bob
    target = outsider_member(bob, await bob.actl_json("status"))
    try:
        connection = await PeerConnection.open(stranger, target)
    except PeerUnreachable:
        return  # refused in the handshake
    try:
        head = await connection.request("/files")
        assert head.status == 403
        body = await connection.body(10_000)
        assert b"hello" not in body
    except PeerUnreachable:
        pass  # TLS 1.3: the refusal can arrive after the client's handshake
    finally:
        await connection.aclose()


#: The lease of each test identity registered by ``registered_outsider``, by id.
LEASES: dict[str, str | None] = {}


async def registered_outsider(network: Network, tmp_path: Path) -> tuple[Identity, Member]:
    """A test identity that registers like a member (its proof signed by p2pd's own
    signing child), and bob as it sees him."""
    me, _ = load_or_create(tmp_path / "tester")
    async with RegistryClient([network.registry.url], SECRET) as client:
        request = RegisterRequest(id=me.id, name="tester", cert=me.cert_pem, port=9)
        LEASES[me.id] = (await client.register(request, KeySigner(me.key_path))).lease
    bob = network.bob

    async def admitted() -> bool:
        return "tester" in [p["name"] for p in await peers_of(bob)]

    await wait_until(admitted, what="bob to learn about the tester")
    return me, outsider_member(bob, await bob.actl_json("status"))


async def test_traversal_and_protocol_details(network: Network, tmp_path: Path) -> None:
    me, bob = await registered_outsider(network, tmp_path)
    connection = await PeerConnection.open(me, bob)
    try:

        async def get(target: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
            head = await connection.request(target, headers)
            return head.status, head.headers, await connection.body(10_000_000)

        for target in (
            "/files/../outside.txt",
            "/files/%2e%2e/outside.txt",
            "/files/%2E%2E%2Foutside.txt",
            "/files//etc/passwd",
            "/files/%2Fetc%2Fpasswd",
            "/files/a%00b",
            "/files/docs/../../outside.txt",
        ):
            status, _, body = await get(target)
            assert status == 400, target
            assert b"outside the share" not in body
        for target in ("/files/escape", "/files/.hidden", "/files/nope", "/files/docs"):
            status, _, body = await get(target)
            assert status == 404, target
            assert b"outside the share" not in body and b"secret" not in body

        status, headers, body = await get("/files")
        assert status == 200
        listing_body = json.loads(body)
        etag = headers["etag"]
        assert etag == f'"{listing_body["generation"]}"'
        status, _, _ = await get("/files", {"If-None-Match": etag})
        assert status == 304

        data = (network.bob.share_dir / "docs/deep/nested.bin").read_bytes()
        digest = "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"
        status, headers, body = await get("/files/docs/deep/nested.bin")
        assert (status, body, headers["repr-digest"]) == (200, data, digest)
        status, headers, body = await get("/files/docs/deep/nested.bin", {"Range": "bytes=1000-"})
        assert status == 206
        assert body == data[1000:]
        assert headers["content-range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
        assert headers["repr-digest"] == digest
        status, headers, _ = await get("/files/hello.txt", {"Range": "bytes=9999-"})
        assert status == 416
        assert headers["content-range"] == "bytes */15"
        status, _, body = await get("/files/Gr%C3%BC%C3%9Fe%20%E2%80%93%20%E2%98%83.txt")
        assert (status, body) == (200, b"non-ASCII name\n")
        status, _, body = await get("/files/empty")
        assert (status, body) == (200, b"")
    finally:
        await connection.aclose()


async def test_a_member_that_left_is_refused(network: Network, tmp_path: Path) -> None:
    me, bob = await registered_outsider(network, tmp_path)
    connection = await PeerConnection.open(me, bob)
    try:
        assert (await connection.request("/files")).status == 200
        await connection.body(1_000_000)
        async with RegistryClient([network.registry.url], SECRET) as client:
            await client.leave(me.id, LEASES[me.id])

        async def forgotten() -> bool:
            return "tester" not in [p["name"] for p in await peers_of(network.bob)]

        await wait_until(forgotten, what="the registry to drop the tester")

        async def refused() -> bool:
            # The same kept-alive connection, within one of bob's intervals (0.5 s here).
            head = await connection.request("/files")
            if head.status == 200:
                await connection.body(1_000_000)
            return head.status == 403

        await wait_until(refused, what="bob to refuse the tester")
    finally:
        await connection.aclose()


def test_p2pctl_exit_3_names_the_socket(tmp_path: Path) -> None:
    import subprocess

    from tests.support import VENV_BIN

    missing = tmp_path / "nothing.sock"
    result = subprocess.run(
        [str(VENV_BIN / "p2pctl"), "--socket", str(missing), "status"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 3
    assert str(missing) in result.stderr
    # Not the service's socket: how to start the p2pd that serves this one.
    assert "`p2pd --config FILE`" in result.stderr


def test_main_exits_2_on_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, "upload_slots = 'many'\n")
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "key 'upload_slots'" in err and str(path) in err


async def test_serving_without_a_registry_says_why(tmp_path: Path) -> None:
    from tests.support import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    with run_p2pd(tmp_path, "lonely", [dead]) as lonely:
        (lonely.share_dir / "a.txt").write_bytes(b"a")

        async def explained() -> bool:
            status = await lonely.actl_json("status")
            return (
                status["registered"] is False
                and str(status["registry_error"]).startswith("not registered:")
                and status["shared_files"] == 1
            )

        await wait_until(explained, what="status to explain why it is not registered")
        human = lonely.ctl("status")
        assert human.returncode == 0
        assert "not registered:" in human.stdout


async def test_connections_and_listings_are_reused(network: Network, tmp_path: Path) -> None:
    me, bob = await registered_outsider(network, tmp_path)
    pool = PeerPool(me)
    try:
        first = await pool.listing(bob)
        assert pool.idle(bob.id) == 1
        again = await pool.listing(bob)  # revalidated with If-None-Match: 304
        assert again is first
        assert pool.idle(bob.id) == 1  # the same connection served both
        (network.bob.share_dir / "fresh.txt").write_bytes(b"fresh")

        async def relisted() -> bool:
            return any(f.path == "fresh.txt" for f in (await pool.listing(bob)).files)

        await wait_until(relisted, what="the new file in a revalidated listing")
    finally:
        await pool.aclose()
