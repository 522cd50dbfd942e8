"""The server's trust store: O(1) per membership change, and one bad certificate harms nobody.

Handshakes through it are in tests/p2pd/tls/test_network_ca.py; here the store itself.
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
from p2pd.membership.members import Members
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


def anchors(contexts: ServerContexts) -> int:
    return int(contexts.current().cert_store_stats()["x509"])


@pytest.fixture(scope="module")
def ten_thousand() -> list[Member]:
    return issued_members(10_000)


def test_membership_changes_at_10000_members_rebuild_nothing(
    tmp_path: Path, ten_thousand: list[Member]
) -> None:
    identity, _ = load_or_create(tmp_path, NETWORK)
    contexts = ServerContexts(identity, NETWORK)
    members = Members.empty(identity.id)
    members.add_listener(contexts.apply)
    crowd, [newcomer] = ten_thousand[:-1], ten_thousand[-1:]
    members.update(crowd)
    context = contexts.current()
    assert anchors(contexts) == 2  # the network CA and our own certificate, for everyone
    members.update([*crowd, newcomer])
    members.update(crowd[1:])  # the newcomer and another leave
    assert contexts.current() is context and contexts.builds == 1
    assert anchors(contexts) == 2

    # A foreign member costs one anchor, added in place; its leaving, one small rebuild.
    foreign = member(Peer.new("foreign").cert, "foreign")
    members.update([*crowd, foreign])
    assert contexts.current() is context and anchors(contexts) == 3
    members.update(crowd)
    rebuilt = contexts.current()
    assert rebuilt is not context and contexts.builds == 2
    assert anchors(contexts) == 2
    assert contexts.current() is rebuilt  # once


def test_many_foreign_leaving_at_once_rebuild_once(tmp_path: Path) -> None:
    identity, _ = load_or_create(tmp_path, NETWORK)
    contexts = ServerContexts(identity, NETWORK)
    foreign = [member(Peer.new(f"f{i}").cert, f"f{i}") for i in range(5)]
    contexts.apply(foreign, [])
    assert anchors(contexts) == 7
    contexts.apply(foreign[3:], foreign[:2])  # a changed certificate is a leave and a join
    contexts.apply([], [foreign[2]])
    assert anchors(contexts) == 4 and contexts.builds == 2


def test_an_unusable_member_certificate_is_skipped_not_fatal(tmp_path: Path) -> None:
    identity, _ = load_or_create(tmp_path, NETWORK)
    good = Peer.new("good")
    contexts = ServerContexts(identity, NETWORK)
    contexts.apply(
        [
            member(good.cert, "good"),
            member(BROKEN, "broken", "x" * 52),
            member(good.cert + BROKEN, "trailing", "y" * 52),
        ],
        [],
    )
    context = contexts.current()
    assert isinstance(context, ssl.SSLContext)
    # The CA, ours and good's: the broken entries added none.
    assert anchors(contexts) == 3


def test_a_certificate_named_like_the_ca_is_no_anchor(tmp_path: Path) -> None:
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
    contexts.apply([member(pem, "fake"), member(Peer.new().cert, "self-signed")], [])
    assert contexts.foreign == 1 and anchors(contexts) == 3


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


def test_a_certificate_whose_names_do_not_parse_keeps_nobody_else_out(tmp_path: Path) -> None:
    # Anchors of the foreign members after it in the same change are still added.
    identity, _ = load_or_create(tmp_path, NETWORK)
    contexts = ServerContexts(identity, NETWORK)
    members = Members.empty(identity.id)
    members.add_listener(contexts.apply)
    odd = malformed_name_pem()
    after = Peer.new("after")
    members.update([member(odd, "odd"), member(after.cert, "after")])
    assert contexts.foreign == 1 and anchors(contexts) == 3
