"""This daemon's key pair and certificate, and the network CA (docs/protocol.md §1).

Created on first start in ``state_dir`` as ``identity.key`` (0600) and
``identity.crt`` (PEM), reused afterwards: the peer id is the hash of the
certificate, so a new certificate makes this host a new member.

The certificate is issued by the **network CA**, whose key every peer derives
from the shared secret: a server then needs that one trust anchor for every
member instead of one per member, and still admits a request only when the
hash of the client's certificate is a current member's id.  Knowing the
secret already lets anyone register, so being able to issue such certificates
grants nothing more.

Deriving the CA, building certificates and checking signatures take the
cryptography package, which stays resident once imported (~8 MiB, most of
it its own OpenSSL).  A running daemon needs none of that: TLS is the
standard library's.  So ``load_for_network`` runs in the start-up child
(``p2pd.prepare``), never in the daemon, and keeps its outcome in
``state_dir`` (``network-ca.crt``): a restart with the same secret and
identity reads it back without the package, even there.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from p2pcommon.identity import peer_id_from_der, short_id

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

log = logging.getLogger("p2pd.identity")

KEY_FILE = "identity.key"
CERT_FILE = "identity.crt"
#: The network CA's certificate, with what it was derived from and checked against.
NETWORK_FILE = "network-ca.crt"
VALIDITY = datetime.timedelta(days=100 * 365)

#: HKDF-SHA256 parameters of the network CA's key: changing any makes another network.
CA_KDF_SALT = b"p2pd network CA"
CA_KDF_INFO = b"p2pd network CA key v1"
#: 64 bits more than the group order's 256: reducing them leaves no usable bias.
CA_KDF_LENGTH = 40
#: The order of the P-256 group (SEC 2, secp256r1 ``n``).
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
#: The network CA's validity is fixed so that every peer builds the same certificate
#: but for the (randomized) signature; 9999-12-31 is RFC 5280's "no expiry".
CA_NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
CA_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)


#: What to do about a damaged or half identity (the peer id is the certificate's hash).
_RESTORE_OR_RENEW = (
    f"restore it from a backup, or remove both {KEY_FILE} and {CERT_FILE} "
    "to become a new member with a new id"
)


def unusable_key(key_path: Path, cert_path: Path, refusal: ssl.SSLError | None = None) -> str:
    """Why the key cannot serve (ssl's ``refusal`` of the pair, if any), and what to do,
    in words: OpenSSL says "PEM lib"."""
    if refusal is not None and refusal.reason == "KEY_VALUES_MISMATCH":
        return f"{key_path} is not the key of {cert_path}: {_RESTORE_OR_RENEW}"
    return f"{key_path} is not a readable PEM private key: {_RESTORE_OR_RENEW}"


@dataclass(frozen=True)
class Identity:
    key_path: Path
    cert_path: Path
    cert_pem: str
    id: str

    @property
    def short_id(self) -> str:
        return short_id(self.id)


@dataclass(frozen=True)
class NetworkCA:
    """The certificate authority every holder of the secret derives alike."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    cert_pem: str

    @property
    def name(self) -> x509.Name:
        return self.cert.subject

    @classmethod
    def from_secret(cls, secret: str) -> NetworkCA:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        scalar = int.from_bytes(_ca_key_material(secret), "big") % (P256_ORDER - 1) + 1
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
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(CA_NOT_BEFORE)
            .not_valid_after(CA_NOT_AFTER)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert, cert.public_bytes(serialization.Encoding.PEM).decode("ascii"))

    def issued(self, cert: x509.Certificate) -> bool:
        """Whether ``cert`` names this CA as its issuer (its signature is not checked)."""
        return cert.issuer == self.cert.subject

    def why_not_issued(self, cert: x509.Certificate) -> str | None:
        """None if this CA signed ``cert``; otherwise why not, in words."""
        from cryptography.exceptions import InvalidSignature

        if cert.issuer == cert.subject:
            return "it was self-signed (made before the network CA)"
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, InvalidSignature, TypeError):
            return "it was issued for another shared secret"
        return None


def _ca_key_usage() -> x509.KeyUsage:
    from cryptography import x509

    return x509.KeyUsage(
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


def _ca_key_material(secret: str) -> bytes:
    """HKDF-SHA256 (RFC 5869) of the secret with the CA's parameters, by the standard library."""
    prk = hmac.digest(CA_KDF_SALT, secret.encode("utf-8"), "sha256")
    okm, block = b"", b""
    for counter in range(1, -(-CA_KDF_LENGTH // 32) + 1):
        block = hmac.digest(prk, block + CA_KDF_INFO + bytes([counter]), "sha256")
        okm += block
    return okm[:CA_KDF_LENGTH]


def record_mac(secret: str, ca_der: bytes, peer_id: str) -> str:
    """Ties a kept record to the secret: this CA certificate, derived from it,
    issued the identity ``peer_id``.  An HMAC keyed by the CA's key material,
    so an edited or stale certificate in the record does not pass."""
    message = b"p2pd network CA record 1\0" + ca_der + b"\0" + peer_id.encode("ascii")
    return hmac.new(_ca_key_material(secret), message, "sha256").hexdigest()


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


def build_certificate(
    key: ec.EllipticCurvePrivateKey, network: NetworkCA | None = None
) -> x509.Certificate:
    """A certificate for ``key``, issued by ``network`` (self-signed without one)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    # Servers find trust anchors by subject (a self-signed member's certificate is
    # one), so each subject must be unique: hence the key id in it.
    key_id = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"p2pd peer {key_id.digest.hex()[:16]}")]
    )
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name if network is None else network.name)
        .public_key(key.public_key())
        .add_extension(key_id, critical=False)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if network is None:
        return builder.sign(key, hashes.SHA256())
    authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(network.key.public_key())
    return builder.add_extension(authority, critical=False).sign(network.key, hashes.SHA256())


def _cert_bytes(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def create_identity(key_path: Path, cert_path: Path, network: NetworkCA | None = None) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    cert = build_certificate(key, network)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(key_path, key_pem, 0o600)
    _write_private(cert_path, _cert_bytes(cert), 0o644)


def _reissue(key_path: Path, cert_path: Path, old: x509.Certificate, network: NetworkCA) -> None:
    """Replace the certificate by one the network CA issues for the same key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    why = network.why_not_issued(old)
    if why is None:
        return
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError):  # garbage, cut short, or protected by a password
        raise ValueError(unusable_key(key_path, cert_path)) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} is not an ECDSA key: {_RESTORE_OR_RENEW}")
    cert = build_certificate(key, network)
    _write_private(cert_path, _cert_bytes(cert), 0o644)
    old_id = peer_id_from_der(old.public_bytes(serialization.Encoding.DER))
    new_id = peer_id_from_der(cert.public_bytes(serialization.Encoding.DER))
    log.warning(
        "identity re-issued by the network CA for the same key: %s -> %s (a new peer id), "
        "because %s",
        short_id(old_id),
        short_id(new_id),
        why,
    )


def load_or_create(state_dir: Path, network: NetworkCA | None = None) -> tuple[Identity, bool]:
    """The identity in ``state_dir``, created when neither file exists; and whether it is new.

    With ``network``, a certificate that CA did not issue (an older self-signed
    one, or one of another secret) is re-issued for the same key.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    state_dir.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = state_dir / KEY_FILE, state_dir / CERT_FILE
    new = not key_path.exists() and not cert_path.exists()
    if new:
        create_identity(key_path, cert_path, network)
    elif not key_path.exists() or not cert_path.exists():
        missing = key_path if not key_path.exists() else cert_path
        raise ValueError(f"{missing} is missing while its pair exists: {_RESTORE_OR_RENEW}")
    if key_path.stat().st_mode & 0o077:
        os.chmod(key_path, 0o600)
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError:
        raise ValueError(
            f"{cert_path} is not a readable PEM certificate: {_RESTORE_OR_RENEW}"
        ) from None
    if network is not None and not new:
        _reissue(key_path, cert_path, cert, network)
    cert_pem = cert_path.read_text(encoding="ascii")
    cert = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
    cert_der = cert.public_bytes(serialization.Encoding.DER)
    return Identity(key_path, cert_path, cert_pem, peer_id_from_der(cert_der)), new


@dataclass(frozen=True)
class NetworkAnchor:
    """What a running daemon needs of the network CA: its certificate, as a trust anchor."""

    cert_pem: str


def load_for_network(state_dir: Path, secret: str) -> tuple[Identity, bool, NetworkAnchor]:
    """``load_or_create`` with the network CA of ``secret``, and that CA's certificate.

    Done in full (with cryptography) only when ``network-ca.crt`` does not say
    that this secret's CA was derived and the identity found issued by it:
    at first start, after a change of secret, of identity or of the file.
    """
    cached = _cached(state_dir, secret)
    if cached is not None:
        check_key_pair(cached[0])
        return cached[0], False, cached[1]
    network = NetworkCA.from_secret(secret)
    identity, new = load_or_create(state_dir, network)
    check_key_pair(identity)
    mac = record_mac(secret, ssl.PEM_cert_to_DER_cert(network.cert_pem), identity.id)
    record = f"p2pd network CA issued {identity.id} {mac}\n{network.cert_pem}"
    try:
        # 0600: the MAC lets whoever reads it test guesses of the secret cheaply.
        _write_private(state_dir / NETWORK_FILE, record.encode("ascii"), 0o600)
    except OSError as exc:
        # Only the next start's speed depends on it.
        log.warning("cannot keep the network CA in %s: %s", state_dir, exc.strerror or exc)
    return identity, new, NetworkAnchor(network.cert_pem)


def check_key_pair(identity: Identity) -> None:
    """ValueError saying which file and what to do unless TLS can use the key pair.

    Loaded as the peer server will load it (the standard library's ssl), so
    that a damaged key stops the start with words, not later with "PEM lib".
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(identity.cert_path, identity.key_path)
    except ssl.SSLError as exc:
        raise ValueError(unusable_key(identity.key_path, identity.cert_path, exc)) from None


def _cached(state_dir: Path, secret: str) -> tuple[Identity, NetworkAnchor] | None:
    key_path, cert_path = state_dir / KEY_FILE, state_dir / CERT_FILE
    try:
        first, _, ca_pem = (state_dir / NETWORK_FILE).read_text(encoding="ascii").partition("\n")
        cert_pem = cert_path.read_text(encoding="ascii")
        words = first.split()
        if words[:4] != ["p2pd", "network", "CA", "issued"] or len(words) != 6:
            return None
        peer_id = peer_id_from_der(ssl.PEM_cert_to_DER_cert(cert_pem))
        mac = record_mac(secret, ssl.PEM_cert_to_DER_cert(ca_pem), peer_id)
        if words[4] != peer_id or not hmac.compare_digest(words[5], mac):
            return None
        if key_path.stat().st_mode & 0o077:
            os.chmod(key_path, 0o600)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return Identity(key_path, cert_path, cert_pem, peer_id), NetworkAnchor(ca_pem)
