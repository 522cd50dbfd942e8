"""The network CA built by hand from docs/protocol.md §1, against a real p2pd.

Whoever knows the secret can issue certificates of the network CA: such a
certificate gets through the TLS handshake, and only the per-request
membership check (by id) stands between it and the files.  No p2pd code is
used to derive the CA: the spec's words are enough, or the spec is wrong.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

from tests.hostile.attacker import (
    Attacker,
    Closed,
    joined,
    peer_get,
    poll,
    refused,
    signed,
)
from tests.support import SECRET, RunningPeer, RunningRegistry, run_p2pd, run_registryd

P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
HELLO = b"hello from bob\n"


def network_ca(secret: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Name]:
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=40,
        salt=b"p2pd network CA",
        info=b"p2pd network CA key v1",
    ).derive(secret.encode("utf-8"))
    key = ec.derive_private_key(int.from_bytes(okm, "big") % (P256_N - 1) + 1, ec.SECP256R1())
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    name = f"p2pd network {hashlib.sha256(spki).hexdigest()[:16]}"
    return key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def issued_attacker(directory: Path, secret: str) -> Attacker:
    """A certificate of the network CA for a fresh key: no extensions, the minimum."""
    ca_key, ca_name = network_ca(secret)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"eve {secrets.token_hex(8)}")])
        )
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(ca_key, hashes.SHA256())
    )
    return Attacker.of(directory, cert, key)


@dataclass
class Scene:
    registry: RunningRegistry
    bob: RunningPeer


@pytest.fixture(scope="module")
def scene(module_dir: Path) -> Iterator[Scene]:
    share = module_dir / "bob" / "share"
    share.mkdir(parents=True)
    (share / "hello.txt").write_bytes(HELLO)
    with (
        run_registryd(module_dir, {"REGISTRYD_PEER_TTL": "600"}) as registry,
        run_p2pd(
            module_dir, "bob", [registry.url], extra_config="heartbeat_interval = 0.5\n"
        ) as bob,
    ):
        yield Scene(registry, bob)


def test_bobs_certificate_is_issued_by_the_ca_the_spec_derives(scene: Scene) -> None:
    ca_key, ca_name = network_ca(SECRET)
    cert = x509.load_pem_x509_certificate((scene.bob.state_dir / "identity.crt").read_bytes())
    assert cert.issuer == ca_name
    signature_hash = cert.signature_hash_algorithm
    assert signature_hash is not None
    ca_key.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(signature_hash))


def test_a_certificate_of_the_ca_gets_403_until_it_is_a_members(
    scene: Scene, tmp_path: Path
) -> None:
    eve = issued_attacker(tmp_path / "eve", SECRET)
    for target in ("/files", "/files/hello.txt"):
        answer = peer_get(scene.bob.port, eve, target)
        assert answer.status == 403 and HELLO not in answer.body, answer
    lease = joined(scene.registry.url, eve, "eve", 9)

    def served() -> bool:
        return peer_get(scene.bob.port, eve, "/files/hello.txt").body == HELLO

    poll(served, timeout=30, what="bob to admit eve once registered")
    leave = {"id": eve.id, "lease": lease}
    assert signed(scene.registry.url, "POST", "/leave", leave).status == 200
    poll(lambda: refused(scene.bob.port, eve), timeout=10, what="bob to refuse eve once gone")
    assert peer_get(scene.bob.port, eve, "/files/hello.txt").status == 403


def test_another_secrets_ca_is_refused_in_the_handshake(scene: Scene, tmp_path: Path) -> None:
    stranger = issued_attacker(tmp_path / "stranger", "not the network's secret")
    for target in ("/files", "/files/hello.txt"):
        assert refused(scene.bob.port, stranger, target)
    with pytest.raises((Closed, ssl.SSLError), match="unknown ca"):  # the alert says why
        peer_get(scene.bob.port, stranger, "/files")
