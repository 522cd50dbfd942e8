"""The network CA: one trust anchor for every member, admission still per request by id.

Real PeerServers on loopback with their TLS, looking members up at a real
registry (tests/p2pd/live_registry.py); the downloader side is p2pd's own
PeerPool (pinning the member's certificate) or a raw ``ssl`` client
(tests/hostile/attacker.py) presenting whatever certificate a test gives it.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from p2pcommon.identity import peer_id_from_pem, short_id
from p2pcommon.models import Member
from p2pd.membership.directory import Directory
from p2pd.peer.client import PeerPool, PeerUnreachable
from p2pd.peer.server import PeerServer
from p2pd.share.watching import Share
from p2pd.tls.contexts import ServerContexts
from p2pd.tls.identity import Identity, NetworkCA, build_certificate, load_or_create
from tests.hostile.attacker import Attacker, Closed, peer_get, refused
from tests.p2pd.live_registry import LiveRegistry, live_registry
from tests.support import SECRET, wait_until

DATA = os.urandom(100_000)


def issued_client(directory: Path, network: NetworkCA) -> Attacker:
    key = ec.generate_private_key(ec.SECP256R1())
    return Attacker.of(directory, build_certificate(key, network), key)


def member_of(who: Attacker | Identity, name: str, port: int = 9) -> Member:
    cert = who.cert_pem
    return Member(id=who.id, name=name, addresses=[f"127.0.0.1:{port}"], cert=cert, last_seen=0)


#: Seconds a served member keeps a lookup's answer: short, so that a departure shows soon.
INTERVAL = 0.3


@dataclass
class Served:
    server: PeerServer
    contexts: ServerContexts
    directory: Directory
    identity: Identity
    port: int
    registry: LiveRegistry

    @property
    def member(self) -> Member:
        return member_of(self.identity, "server", self.port)

    async def join(self, *members: Member) -> None:
        """Members (as the registry lists them) from now on."""
        await self.registry.add(*members)

    async def leave(self, *members: Member) -> None:
        await self.registry.remove(*(m.id for m in members))

    async def get(
        self, who: Attacker, target: str = "/files/data.bin", *, sni: str | bool = True
    ) -> int:
        answer = await trio.to_thread.run_sync(lambda: peer_get(self.port, who, target, sni=sni))
        assert answer.status != 200 or answer.body == DATA or target == "/files"
        return answer.status

    async def refuses(
        self, who: Attacker, target: str = "/files/data.bin", *, sni: str | bool = True
    ) -> bool:
        return await trio.to_thread.run_sync(lambda: refused(self.port, who, target, sni=sni))

    async def until_refused(self, who: Attacker, *, sni: str | bool = True) -> None:
        """Until ``who`` is refused: within one interval of leaving (polled, generously)."""

        async def check() -> bool:
            return await self.refuses(who, sni=sni)

        await wait_until(check, what=f"{who.id[:7]} refused")


@asynccontextmanager
async def served(
    tmp_path: Path,
    network: NetworkCA | None,
    *,
    self_signed: bool = False,
    files: dict[str, bytes] | None = None,
    registry: LiveRegistry | None = None,
) -> AsyncIterator[Served]:
    """A PeerServer sharing ``files`` (data.bin); its identity is self-signed if asked.

    It looks members up at ``registry`` (else a registry of its own)."""
    if registry is None:
        async with (
            live_registry() as own,
            served(tmp_path, network, self_signed=self_signed, files=files, registry=own) as s,
        ):
            yield s
        return
    root, state = tmp_path / "share", tmp_path / "state"
    root.mkdir(parents=True, exist_ok=True)
    for name, data in (files or {"data.bin": DATA}).items():
        (root / name).write_bytes(data)
    identity, _ = load_or_create(state, None if self_signed else network)
    directory = registry.directory(identity.id, interval=INTERVAL)
    contexts = ServerContexts(identity, network)
    share = Share(root, state)
    await share.rescan()
    server = PeerServer(share, directory, contexts, upload_slots=2, rate_limit=0)
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(server.http.run, listeners)
        port = listeners[0].socket.getsockname()[1]
        yield Served(server, contexts, directory, identity, port, registry)
        await server.http.shutdown(1)


def public_bytes(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# -- the CA and the identity ------------------------------------------------------


def test_the_same_secret_makes_the_same_ca_and_another_secret_another() -> None:
    one, two, other = (NetworkCA.from_secret(s) for s in (SECRET, SECRET, SECRET + "!"))
    assert one.name == two.name
    assert public_bytes(one.cert.public_key()) == public_bytes(two.cert.public_key())
    assert one.name != other.name
    assert public_bytes(one.key.public_key()) != public_bytes(other.key.public_key())
    constraints = one.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    assert one.cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    # A certificate one peer's CA issued verifies against another peer's build.
    cert = build_certificate(ec.generate_private_key(ec.SECP256R1()), one)
    cert.verify_directly_issued_by(two.cert)


def test_a_new_identity_is_issued_by_the_network_ca_and_stable(tmp_path: Path) -> None:
    network = NetworkCA.from_secret(SECRET)
    first, new = load_or_create(tmp_path, network)
    assert new
    cert = x509.load_pem_x509_certificate(first.cert_pem.encode())
    assert cert.issuer == network.name and cert.subject != network.name
    cert.verify_directly_issued_by(network.cert)
    again, new_again = load_or_create(tmp_path, NetworkCA.from_secret(SECRET))
    assert not new_again and again.id == first.id


def test_a_self_signed_identity_is_reissued_for_the_same_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old, _ = load_or_create(tmp_path)  # as made before the network CA
    key_before = (tmp_path / "identity.key").read_bytes()
    network = NetworkCA.from_secret(SECRET)
    with caplog.at_level(logging.INFO, logger="p2pd.identity"):
        new, created = load_or_create(tmp_path, network)
    assert not created and new.id != old.id
    assert new.id == peer_id_from_pem((tmp_path / "identity.crt").read_text())
    assert (tmp_path / "identity.key").read_bytes() == key_before
    old_cert = x509.load_pem_x509_certificate(old.cert_pem.encode())
    new_cert = x509.load_pem_x509_certificate(new.cert_pem.encode())
    assert public_bytes(new_cert.public_key()) == public_bytes(old_cert.public_key())
    new_cert.verify_directly_issued_by(network.cert)
    [line] = [r.getMessage() for r in caplog.records]
    assert f"{short_id(old.id)} -> {short_id(new.id)}" in line and "self-signed" in line
    # Stable from then on; another secret re-issues it once more, and says so.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="p2pd.identity"):
        assert load_or_create(tmp_path, network)[0].id == new.id
        assert not caplog.records
        moved, _ = load_or_create(tmp_path, NetworkCA.from_secret("another network"))
    assert moved.id != new.id
    assert "another shared secret" in caplog.records[0].getMessage()


# -- handshakes and admission ----------------------------------------------------------


async def test_members_of_the_ca_meet_without_each_others_certificate_as_anchor(
    tmp_path: Path,
) -> None:
    network = NetworkCA.from_secret(SECRET)
    client, _ = load_or_create(tmp_path / "client", network)
    async with served(tmp_path / "server", network) as s:
        await s.join(member_of(client, "client"))
        assert s.contexts.foreign == 0
        # The network CA and the server's own certificate: nothing per member.
        assert s.contexts.default.cert_store_stats()["x509"] == 2
        pool = PeerPool(client)
        try:
            listing = await pool.listing(s.member)
        finally:
            await pool.aclose()
        assert [f.path for f in listing.files] == ["data.bin"]


async def test_the_downloader_pins_the_member_not_the_ca(tmp_path: Path) -> None:
    """Partial-chain trust takes the pinned certificate alone: another of the CA fails."""
    network = NetworkCA.from_secret(SECRET)
    client, _ = load_or_create(tmp_path / "client", network)
    impostor, _ = load_or_create(tmp_path / "impostor", network)
    async with served(tmp_path / "server", network) as s:
        await s.join(member_of(client, "client"))
        pool = PeerPool(client)
        try:
            # The server's address, listed with another member's certificate.
            with pytest.raises(PeerUnreachable, match="certificate verify failed"):
                await pool.listing(member_of(impostor, "impostor", s.port))
        finally:
            await pool.aclose()


async def test_a_self_signed_server_is_still_reached_by_its_pin(tmp_path: Path) -> None:
    network = NetworkCA.from_secret(SECRET)
    client, _ = load_or_create(tmp_path / "client", network)
    async with served(tmp_path / "server", network, self_signed=True) as s:
        await s.join(member_of(client, "client"))
        pool = PeerPool(client)
        try:
            assert (await pool.listing(s.member)).files
        finally:
            await pool.aclose()


async def test_a_foreign_member_naming_itself_by_sni_is_admitted_while_a_member(
    tmp_path: Path,
) -> None:
    network = NetworkCA.from_secret(SECRET)
    foreign = Attacker.new(tmp_path / "foreign")  # its own self-signed certificate
    issued = issued_client(tmp_path / "issued", network)
    async with served(tmp_path / "server", network) as s:
        assert await s.refuses(foreign, sni=foreign.id)  # not a member yet
        await s.join(member_of(foreign, "foreign"), member_of(issued, "issued"))

        async def admitted() -> bool:  # once the short negative answer ran out
            return not await s.refuses(foreign, sni=foreign.id)

        await wait_until(admitted, what="the foreign member admitted")
        assert await s.get(issued) == 200  # no SNI needed: the CA issued it
        # Its own context, kept; the default still trusts the CA and ourselves alone.
        assert s.contexts.foreign == 1
        assert s.contexts.default.cert_store_stats()["x509"] == 2
        assert await s.get(foreign, sni=foreign.id) == 200
        assert s.contexts.builds == 2  # the default and the foreign member's, once
        await s.leave(member_of(foreign, "foreign"))
        await s.until_refused(foreign, sni=foreign.id)
        assert await s.get(issued) == 200


async def test_a_foreign_member_without_sni_is_refused_with_unknown_ca(tmp_path: Path) -> None:
    network = NetworkCA.from_secret(SECRET)
    foreign = Attacker.new(tmp_path / "foreign")
    other = Attacker.new(tmp_path / "other")
    async with served(tmp_path / "server", network) as s:
        await s.join(member_of(foreign, "foreign"), member_of(other, "other"))
        for sni in (False, "not-an-id.example", other.id):
            # No name, a name that is no member, another member's id: the default
            # context (or the other's), which does not trust this certificate.
            with pytest.raises((ssl.SSLError, Closed), match="UNKNOWN_CA"):
                await trio.to_thread.run_sync(partial(peer_get, s.port, foreign, "/files", sni=sni))
        assert s.contexts.foreign == 1  # the other's, asked for by name
        assert await s.get(foreign, sni=foreign.id) == 200


async def test_a_certificate_of_the_ca_that_is_no_members_gets_403(tmp_path: Path) -> None:
    network = NetworkCA.from_secret(SECRET)
    member = issued_client(tmp_path / "member", network)
    stranger = issued_client(tmp_path / "stranger", network)
    async with served(tmp_path / "server", network) as s:
        await s.join(member_of(member, "member"))
        assert await s.get(member) == 200
        # Through the handshake (the CA issued it), refused before any byte of a file.
        for target in ("/files", "/files/data.bin"):
            assert await s.get(stranger, target) == 403
        # The member left: its certificate still passes TLS, not 403 (within one interval).
        await s.leave(member_of(member, "member"))
        await s.until_refused(member)
        assert await s.get(member) == 403
        assert s.server.stats.refused["not a member"] >= 4


async def test_a_certificate_claiming_the_ca_without_its_signature_is_refused(
    tmp_path: Path,
) -> None:
    network = NetworkCA.from_secret(SECRET)
    forger = NetworkCA.from_secret("not the network's secret")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = x509.CertificateBuilder(
        issuer_name=network.name,  # the right name, signed with another key
        subject_name=build_certificate(key).subject,
        public_key=key.public_key(),
        serial_number=x509.random_serial_number(),
        not_valid_before=network.cert.not_valid_before_utc,
        not_valid_after=network.cert.not_valid_after_utc,
    ).sign(forger.key, hashes.SHA256())
    forged = Attacker.of(tmp_path / "forged", cert, key)
    async with served(tmp_path / "server", network) as s:
        await s.join(member_of(forged, "forged"))  # even as a member
        assert await s.refuses(forged)
        assert s.contexts.foreign == 0
        assert s.server.stats.refused["handshake"] == 1
