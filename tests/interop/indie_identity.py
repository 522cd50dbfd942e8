"""The independent peer's identity and the network CA, from docs/protocol.md §1 alone.

Part of an implementation written from the document, not from p2pd: it
imports only the standard library and ``cryptography`` (for a key and
certificates), never the project's modules.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

#: The order n of the P-256 group (SEC 2, secp256r1).
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def peer_id(der: bytes) -> str:
    """§1 "Peer id": lowercase unpadded base32 of SHA-256 over the certificate's DER."""
    return base64.b32encode(hashlib.sha256(der).digest()).decode("ascii").rstrip("=").lower()


def key_identifier(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """§1 "Key identifiers": SHA-1 over the subjectPublicKey BIT STRING's value.

    For P-256 that value is the uncompressed point 04 || X || Y, without the
    BIT STRING's tag, length and unused-bits octet.  Computed by hand here,
    as the document says, not by a library's helper.
    """
    point = public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return hashlib.sha1(point).digest()


@dataclass(frozen=True)
class Identity:
    """A *foreign* member's identity (§1): its own key and a self-signed certificate."""

    cert_pem: str
    cert_der: bytes
    cert_path: Path
    key_path: Path

    @property
    def id(self) -> str:
        return peer_id(self.cert_der)

    def key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key


def new_identity(directory: Path, name: str) -> Identity:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} {secrets.token_hex(8)}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "identity.crt", directory / "identity.key"
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    cert_path.write_text(cert_pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return Identity(cert_pem, cert.public_bytes(serialization.Encoding.DER), cert_path, key_path)


def network_ca_pem(secret: str) -> str:
    """§1 "Network CA": the CA certificate every holder of the secret derives.

    Its signature differs from p2pd's (ECDSA is randomized); its name, key and
    key identifier must not, or p2pd's certificates would not chain to it.
    """
    material = HKDF(
        algorithm=hashes.SHA256(),
        length=40,
        salt=b"p2pd network CA",
        info=b"p2pd network CA key v1",
    ).derive(secret.encode("utf-8"))
    scalar = int.from_bytes(material, "big") % (P256_ORDER - 1) + 1
    key = ec.derive_private_key(scalar, ec.SECP256R1())
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    name = x509.Name(
        [
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"p2pd network {hashlib.sha256(spki).hexdigest()[:16]}"
            )
        ]
    )
    usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier(key_identifier(key.public_key())), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
