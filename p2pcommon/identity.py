"""Peer identity as defined in docs/protocol.md §1: the id is the hash of the certificate."""

from __future__ import annotations

import base64
import hashlib

SHORT_ID_LENGTH = 7


def peer_id_from_der(cert_der: bytes) -> str:
    """Lowercase unpadded base32 of SHA-256 over the certificate's DER bytes."""
    digest = hashlib.sha256(cert_der).digest()
    return base64.b32encode(digest).decode("ascii").rstrip("=").lower()


def cert_der_from_pem(cert_pem: str) -> bytes:
    """The DER bytes of one PEM certificate; ValueError if it is not one."""
    # Here, not at the top: a running p2pd never parses certificates (~8 MiB resident).
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise ValueError(f"not a PEM X.509 certificate: {exc}") from None
    return cert.public_bytes(Encoding.DER)


def canonical_pem(cert_pem: str) -> str:
    """The one certificate in ``cert_pem``, re-encoded; ValueError for anything else.

    What a registry stores and hands out: extra blocks or text around the
    certificate would reach every member's TLS trust store.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    if cert_pem.count("-----BEGIN") != 1:
        raise ValueError("exactly one PEM certificate is expected")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
        # cryptography parses names and extensions when first asked: a
        # certificate whose names do not parse would fail in every member.
        cert.subject.rfc4514_string()
        cert.issuer.rfc4514_string()
        _ = cert.extensions
    except (ValueError, UnicodeEncodeError) as exc:
        raise ValueError(f"not a usable PEM X.509 certificate: {exc}") from None
    return cert.public_bytes(Encoding.PEM).decode("ascii")


def peer_id_from_pem(cert_pem: str) -> str:
    return peer_id_from_der(cert_der_from_pem(cert_pem))


def short_id(peer_id: str) -> str:
    return peer_id[:SHORT_ID_LENGTH]
