"""This daemon's key pair and self-signed certificate (docs/protocol.md §1).

Created on first start in ``state_dir`` as ``identity.key`` (0600) and
``identity.crt`` (PEM), reused afterwards: the peer id is the hash of the
certificate, so regenerating it would make this host a new member.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from p2pcommon.identity import peer_id_from_der, short_id

KEY_FILE = "identity.key"
CERT_FILE = "identity.crt"
VALIDITY = datetime.timedelta(days=100 * 365)


@dataclass(frozen=True)
class Identity:
    key_path: Path
    cert_path: Path
    cert_pem: str
    id: str

    @property
    def short_id(self) -> str:
        return short_id(self.id)


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with ``mode`` from the first byte (no window with wider rights)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def build_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """A self-signed certificate for ``key``; its hash is the peer id."""
    # Every member's certificate is a trust anchor of the others' servers; OpenSSL
    # finds anchors by subject, so each subject must be unique, hence the key id in it.
    key_id = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"p2pd peer {key_id.digest.hex()[:16]}")]
    )
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .add_extension(key_id, critical=False)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def create_identity(key_path: Path, cert_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build_certificate(key)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(key_path, key_pem, 0o600)
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def load_or_create(state_dir: Path) -> tuple[Identity, bool]:
    """The identity in ``state_dir``, created when neither file exists; and whether it is new."""
    state_dir.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = state_dir / KEY_FILE, state_dir / CERT_FILE
    new = not key_path.exists() and not cert_path.exists()
    if new:
        create_identity(key_path, cert_path)
    elif not key_path.exists() or not cert_path.exists():
        missing = key_path if not key_path.exists() else cert_path
        raise ValueError(
            f"{missing} is missing while its pair exists: restore it from a backup, or remove "
            f"both {KEY_FILE} and {CERT_FILE} to become a new member with a new id"
        )
    if key_path.stat().st_mode & 0o077:
        os.chmod(key_path, 0o600)
    cert_pem = cert_path.read_text(encoding="ascii")
    cert = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
    cert_der = cert.public_bytes(serialization.Encoding.DER)
    return Identity(key_path, cert_path, cert_pem, peer_id_from_der(cert_der)), new
