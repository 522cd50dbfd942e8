"""Wire pieces of the scale benchmark's virtual peers: certificates, signatures, answers.

The virtual peers speak the real protocol (docs/protocol.md §2, §3) but must
do it at ~1 000 heartbeats/s on a machine whose other core runs the registry:
``p2pcommon.signing.signer.Signer`` takes ~200 µs per request, so ``FastSigner``
builds the same signature base directly (a few µs) and ``self_check`` proves,
before any load, that its headers are byte for byte the Signer's and that the
Signer verifies them.  Every request still gets a fresh nonce and ``created``.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from p2pcommon.identity import peer_id_from_der
from p2pcommon.signing.member_proof import (
    add_member_signature,
    member_params,
    sign_base,
    signature_base,
)
from p2pcommon.signing.signer import Signer

_PARAMS = (
    '("@method" "@path" "content-digest");created={created};keyid="p2p";alg="hmac-sha256";'
    'nonce="{nonce}"'
)


Issuer = tuple[x509.Name, ec.EllipticCurvePrivateKey]


def make_certificates(
    count: int,
    salt: str,
    issuer: Issuer | None,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[list[tuple[str, str]], bytes]:
    """``count`` (id, PEM) pairs: one key (``key``, else a new one), one certificate
    each, shaped like p2pd's; and that key (PKCS#8 PEM), which signs every
    register's member proof.

    Issued by ``issuer`` (p2pd's network CA: what its members present), else
    self-signed (a *foreign* member's, docs/protocol.md §1).  Servers find
    anchors by subject, so each subject is unique, as p2pd's own are (a 16-hex
    key id there; a run salt and the index here, same length).
    """
    key = key or ec.generate_private_key(ec.SECP256R1())
    key_id = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    now = datetime.datetime.now(datetime.UTC)
    base = (
        x509.CertificateBuilder()
        .public_key(key.public_key())
        .add_extension(key_id, critical=False)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    signer = key
    if issuer is not None:
        signer = issuer[1]
        authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key())
        base = base.add_extension(authority, critical=False)
    pairs = []
    for index in range(count):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"p2pd peer {salt}{index:08x}")])
        cert = (
            base.subject_name(name)
            .issuer_name(name if issuer is None else issuer[0])
            .serial_number(x509.random_serial_number())
            .sign(signer, hashes.SHA256())
        )
        der = cert.public_bytes(serialization.Encoding.DER)
        pairs.append(
            (peer_id_from_der(der), cert.public_bytes(serialization.Encoding.PEM).decode())
        )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pairs, key_pem


def load_key(key_pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def content_digest(body: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"


class FastSigner:
    """Signs requests as ``Signer.sign_request`` does, with nonces unique per process."""

    def __init__(self, secret: str) -> None:
        self._key = secret.encode("utf-8")
        # Random per process, so that restarts and sibling workers never share a nonce.
        self._prefix = os.urandom(8).hex()
        self._count = 0

    def nonce(self) -> str:
        self._count += 1
        return f"{self._prefix}{self._count:x}"

    def headers(
        self, method: str, path: str, body: bytes, now: float, nonce: str
    ) -> tuple[str, str, str]:
        """(Content-Digest, Signature-Input, Signature) values for a request to ``path``."""
        digest = content_digest(body)
        params = _PARAMS.format(created=int(now), nonce=nonce)
        base = (
            f'"@method": {method}\n"@path": {path}\n"content-digest": {digest}\n'
            f'"@signature-params": {params}'
        )
        mac = hmac.digest(self._key, base.encode(), "sha256")
        return digest, f"sig={params}", f"sig=:{base64.b64encode(mac).decode()}:"

    def request(
        self,
        method: str,
        target: str,
        body: bytes,
        host: str,
        now: float,
        member: tuple[str, ec.EllipticCurvePrivateKey] | None = None,
    ) -> tuple[bytes, str]:
        """The whole request (the signature covers the path, not the query) and its nonce;
        with ``member`` (an id and its key), a register's member proof (docs/protocol.md §2.4)."""
        nonce = self.nonce()
        path = target.split("?", 1)[0]
        digest, signature_input, signature = self.headers(method, path, body, now, nonce)
        if member is not None:
            # Registers are rare: the project's own code, with the key, in this process.
            fields = {"Signature-Input": signature_input, "Signature": signature}
            params = member_params(member[0], int(now), nonce)
            base = signature_base(method, path, digest, params)
            add_member_signature(fields, params, sign_base(member[1], base))
            signature_input, signature = fields["Signature-Input"], fields["Signature"]
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
            f"Content-Digest: {digest}\r\nSignature-Input: {signature_input}\r\n"
            f"Signature: {signature}\r\n"
        )
        if body:
            head += "Content-Type: application/json\r\n"
        return (head + "\r\n").encode() + body, nonce


def self_check(secret: str) -> None:
    """Raise AssertionError unless FastSigner signs exactly as the project's Signer."""
    fast, slow = FastSigner(secret), Signer(secret)
    now = 1_700_000_000.75
    for method, target, body in (
        ("POST", "/heartbeat", b'{"id":"abc"}'),
        ("GET", "/members?after=abc&limit=10", b""),
    ):
        nonce = fast.nonce()
        path = target.split("?", 1)[0]
        expected, _ = slow.sign_request(method, path, body, now=now, nonce=nonce)
        got = dict(
            zip(
                ("Content-Digest", "Signature-Input", "Signature"),
                fast.headers(method, path, body, now, nonce),
                strict=True,
            )
        )
        assert got == expected, f"FastSigner differs from Signer: {got} != {expected}"
        raw, nonce = fast.request(method, target, body, "registry", now)
        answer = parse_request_headers(raw)
        verified = slow.verify_request(method, target, answer, body, now=now)
        assert verified.nonce == nonce


def parse_request_headers(raw: bytes) -> list[tuple[str, str]]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return [(name, value.strip()) for name, _, value in (line.partition(":") for line in head)]


class ProtocolError(Exception):
    """The answer is not framed as registryd frames its answers."""


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    #: Bytes on the wire: head and body.
    size: int
    close: bool


class AnswerReader:
    """Splits a byte stream into HTTP/1.1 answers framed by Content-Length."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self._head: tuple[int, list[tuple[str, str]], int, int, bool] | None = None

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def next(self) -> Answer | None:
        if self._head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > 65536:
                    raise ProtocolError("answer head larger than 64 KiB")
                return None
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            try:
                status = int(lines[0].split(" ", 2)[1])
            except (IndexError, ValueError):
                raise ProtocolError(f"bad status line {lines[0]!r}") from None
            headers = [
                (n.lower(), v.strip()) for n, _, v in (ln.partition(":") for ln in lines[1:])
            ]
            fields = dict(headers)
            if "transfer-encoding" in fields:
                raise ProtocolError("chunked answers are not expected from registryd")
            length = int(fields.get("content-length", "0"))
            close = fields.get("connection", "").lower() == "close"
            self._head = (status, headers, end + 4, length, close)
        status, headers, start, length, close = self._head
        if len(self.buffer) < start + length:
            return None
        body = bytes(self.buffer[start : start + length])
        del self.buffer[: start + length]
        self._head = None
        return Answer(status, headers, body, start + length, close)


_INTERVAL = re.compile(rb'"heartbeat_interval":\s*([0-9.]+)')


def interval_of(body: bytes) -> float | None:
    """The ``heartbeat_interval`` of a lease answer, without parsing the rest."""
    match = _INTERVAL.search(body)
    return None if match is None else float(match.group(1))
