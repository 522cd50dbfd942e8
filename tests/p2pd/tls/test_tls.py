"""The server's contexts: nothing per membership change, one context per foreign member
that connects (kept, bounded), and one bad certificate harms nobody.

Handshakes through them are in tests/p2pd/tls/test_network_ca.py; here the contexts.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from p2pcommon.identity import canonical_pem, peer_id_from_pem
from p2pcommon.models import Member
from p2pd.tls.contexts import ServerContexts
from p2pd.tls.identity import NetworkCA, build_certificate, load_or_create
from tests.support import SECRET, Peer

NETWORK = NetworkCA.from_secret(SECRET)
BROKEN = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"


def member(cert: str, name: str = "m", member_id: str | None = None) -> Member:
    return Member(
        id=member_id or peer_id_from_pem(cert), name=name, addresses=[], cert=cert, last_seen=0
    )


def issued_members(count: int) -> list[Member]:
    """``count`` members with certificates of the network CA (one key: signing is the cost)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pems = [
        build_certificate(key, NETWORK).public_bytes(serialization.Encoding.PEM).decode()
        for _ in range(count)
    ]
    return [member(pem, f"peer{i}") for i, pem in enumerate(pems)]


def anchors(context: ssl.SSLContext) -> int:
    return int(context.cert_store_stats()["x509"])


@pytest.fixture(scope="module")
def ten_thousand() -> list[Member]:
    return issued_members(10_000)


async def test_members_of_the_ca_cost_nothing_however_many(
    tmp_path: Path, ten_thousand: list[Member]
) -> None:
    identity, _ = load_or_create(tmp_path, NETWORK)
    contexts = ServerContexts(identity, NETWORK)
    for one in ten_thousand[::100]:
        assert await contexts.for_member(one) is contexts.default
    assert await contexts.for_member(None) is contexts.default
    assert anchors(contexts.default) == 2  # the network CA and our own certificate
    assert contexts.builds == 1 and contexts.foreign == 0


async def test_a_foreign_member_gets_its_own_context_once_and_the_kept_ones_are_bounded(
    tmp_path: Path,
) -> None:
    identity, _ = load_or_create(tmp_path, NETWORK)
    contexts = ServerContexts(identity, NETWORK, max_foreign=3)
    foreign = [member(Peer.new(f"f{i}").cert, f"f{i}") for i in range(5)]
    first = await contexts.for_member(foreign[0])
    assert first is not contexts.default and anchors(first) == 3
    assert await contexts.for_member(foreign[0]) is first and contexts.builds == 2
    for one in foreign[1:]:
        await contexts.for_member(one)
    assert contexts.foreign == 3 and contexts.builds == 6
    # The least recently used went: asked again, it is built again.
    assert await contexts.for_member(foreign[0]) is not first
    assert anchors(contexts.default) == 2  # never touched


async def test_an_unusable_member_certificate_gets_the_default_not_an_error(
    tmp_path: Path,
) -> None:
    identity, _ = load_or_create(tmp_path, NETWORK)
    good = Peer.new("good")
    contexts = ServerContexts(identity, NETWORK)
    for broken in (member(BROKEN, "broken", "x" * 52), member(good.cert + BROKEN, "t", "y" * 52)):
        assert await contexts.for_member(broken) is contexts.default
    assert anchors(await contexts.for_member(member(good.cert, "good"))) == 3


async def test_a_certificate_named_like_the_ca_is_no_anchor(tmp_path: Path) -> None:
    """Self-signed under the CA's name by another key, it would stand in for the CA."""
    identity, _ = load_or_create(tmp_path, NETWORK)
    contexts = ServerContexts(identity, NETWORK)
    key = ec.generate_private_key(ec.SECP256R1())
    fake_ca = (
        x509.CertificateBuilder(
            issuer_name=NETWORK.name,
            subject_name=NETWORK.name,
            public_key=key.public_key(),
            serial_number=1,
            not_valid_before=NETWORK.cert.not_valid_before_utc,
            not_valid_after=NETWORK.cert.not_valid_after_utc,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = fake_ca.public_bytes(serialization.Encoding.PEM).decode()
    assert await contexts.for_member(member(pem, "fake")) is contexts.default
    assert anchors(await contexts.for_member(member(Peer.new().cert, "self-signed"))) == 3
    assert contexts.foreign == 1


def malformed_name_pem() -> str:
    """A self-signed certificate with invalid UTF-8 in its names: it loads, they do not parse."""
    pem = Peer.new("odd").cert
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    marker = b"p2pd"
    assert marker in der
    broken = der.replace(marker, b"\xff\xfe2d")
    return x509.load_der_x509_certificate(broken).public_bytes(serialization.Encoding.PEM).decode()


def test_a_certificate_whose_names_do_not_parse_is_refused_by_the_registry() -> None:
    with pytest.raises(ValueError, match="usable"):
        canonical_pem(malformed_name_pem())


async def test_a_certificate_whose_names_do_not_parse_keeps_nobody_else_out(
    tmp_path: Path,
) -> None:
    identity, _ = load_or_create(tmp_path, NETWORK)
    contexts = ServerContexts(identity, NETWORK)
    assert await contexts.for_member(member(malformed_name_pem(), "odd")) is contexts.default
    after = Peer.new("after")
    assert anchors(await contexts.for_member(member(after.cert, "after"))) == 3
    assert contexts.foreign == 1
