"""The register's member signature (docs/protocol.md §2.4): made, split off, checked.

Includes a register made by a standard client, the http-message-signatures
package (two signatures on one message, ``append_if_signature_exists``),
which the registry must accept as it accepts p2pd's.
"""

from __future__ import annotations

import datetime
import json
import time
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms

from p2pcommon.http.events import Request
from p2pcommon.identity import peer_id_from_pem
from p2pcommon.signing.member_proof import (
    MemberProofError,
    add_member_signature,
    check_member_signature,
    member_params,
    sign_base,
    signature_base,
    split_member_signature,
)
from p2pcommon.signing.messages import RequestMessage
from p2pcommon.signing.signer import Signer
from registryd.app import RegistryApp
from registryd.metrics import RegistryMetrics
from registryd.store import MemoryStore
from tests.support import SECRET, Peer

NOW = 1_800_000_000


def register_request(peer: Peer, *, key: Any = None, body: bytes | None = None) -> Request:
    body = body or json.dumps({"id": peer.id, "name": "p", "cert": peer.cert, "port": 1}).encode()
    headers, nonce = Signer(SECRET).sign_request("POST", "/register", body, now=NOW)
    params = member_params(peer.id, NOW, nonce)
    base = signature_base("POST", "/register", headers["Content-Digest"], params)
    add_member_signature(headers, params, sign_base(key or peer.key, base))
    fields = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request("POST", "/register", fields, body, "192.0.2.1")


def check(request: Request, peer_id: str, cert: str) -> None:
    headers, member = split_member_signature(request.headers)
    verified = Signer(SECRET).verify_request("POST", "/register", headers, request.body, now=NOW)
    check_member_signature(
        member,
        member_id=peer_id,
        cert_pem=cert,
        method="POST",
        path="/register",
        digest=(request.header(b"content-digest") or b"").decode(),
        created=verified.created,
        nonce=verified.nonce,
    )


def test_the_sig_signature_is_left_exactly_as_signed() -> None:
    peer = Peer.new()
    request = register_request(peer)
    headers, member = split_member_signature(request.headers)
    assert member is not None and member.signature is not None
    sig_input = dict(headers)[b"signature-input"].decode()
    assert sig_input.startswith('sig=("@method" "@path" "content-digest");created=')
    assert "member" not in sig_input
    check(request, peer.id, peer.cert)


def test_without_a_member_signature_nothing_changes() -> None:
    headers, _ = Signer(SECRET).sign_request("GET", "/clients", b"", now=NOW)
    fields = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    assert split_member_signature(fields) == (fields, None)
    broken = [*fields[:1], (b"signature-input", b"sig=((((")]
    assert split_member_signature(broken) == (broken, None)


def self_signed(key: Any) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other key")])
    now = datetime.datetime.now(datetime.UTC)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, algorithm)
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def member_part(damage: Any) -> Any:
    """``damage`` applied to the ``member`` entry of a signature field only."""

    def apply(value: str) -> str:
        sig, mark, member = value.partition(", member=")
        return sig + mark + damage(member) if mark else value

    return apply


@pytest.mark.parametrize(
    ("name", "damage", "says"),
    [
        (b"signature", lambda v: v.partition(", member=")[0], "in both Signature-Input"),
        (
            b"signature-input",
            member_part(lambda m: m.replace('"content-digest")', '"content-digest" "x")')),
            "cover exactly",
        ),
        (
            b"signature-input",
            member_part(lambda m: m.replace(';alg="ecdsa', ';tag="t";alg="ecdsa')),
            "exactly the parameters",
        ),
        (
            b"signature-input",
            member_part(lambda m: m.replace('alg="ecdsa-p256-sha256"', 'alg="ed25519"')),
            'alg="ecdsa-p256-sha256"',
        ),
        (
            b"signature-input",
            member_part(lambda m: m.replace(";created=", ";created=1")),
            "same created and nonce",
        ),
    ],
)
def test_each_flaw_is_named(name: bytes, damage: Any, says: str) -> None:
    peer = Peer.new()
    request = register_request(peer)
    request.headers = [
        (field, damage(value.decode()).encode()) if field == name else (field, value)
        for field, value in request.headers
    ]
    with pytest.raises(MemberProofError, match=says):
        check(request, peer.id, peer.cert)


def test_a_proof_of_another_id_key_or_body_fails() -> None:
    peer, other = Peer.new(), Peer.new()
    with pytest.raises(MemberProofError, match="keyid must be the member id"):
        check(register_request(peer), other.id, peer.cert)
    with pytest.raises(MemberProofError, match="does not verify"):
        check(register_request(peer, key=other.key), peer.id, peer.cert)
    with pytest.raises(MemberProofError, match="labelled 'member'"):
        check_member_signature(
            None,
            member_id=peer.id,
            cert_pem=peer.cert,
            method="POST",
            path="/register",
            digest="sha-256=:x:",
            created=NOW,
            nonce="n",
        )


def test_an_rsa_key_cannot_prove_and_ed25519_can() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = self_signed(rsa_key)
    peer = Peer(peer_id_from_pem(cert), cert, "rsa", ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(MemberProofError, match="only ECDSA P-256 and Ed25519"):
        check(register_request(peer), peer.id, cert)
    key = ed25519.Ed25519PrivateKey.generate()
    cert = self_signed(key)
    member_id = peer_id_from_pem(cert)
    body = json.dumps({"id": member_id, "name": "e", "cert": cert, "port": 1}).encode()
    headers, nonce = Signer(SECRET).sign_request("POST", "/register", body, now=NOW)
    params = member_params(member_id, NOW, nonce).replace("ecdsa-p256-sha256", "ed25519")
    base = signature_base("POST", "/register", headers["Content-Digest"], params)
    add_member_signature(headers, params, sign_base(key, base))
    fields = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    check(Request("POST", "/register", fields, body, "h"), member_id, cert)


class KeyResolver(HTTPSignatureKeyResolver):
    def __init__(self, keys: dict[str, Any]) -> None:
        self._keys = keys

    def resolve_private_key(self, key_id: str) -> Any:
        return self._keys[key_id]

    def resolve_public_key(self, key_id: str) -> Any:
        raise NotImplementedError


async def test_a_standard_client_registers_with_two_signatures() -> None:
    """The package signs ``sig`` (HMAC) and appends ``member`` (ECDSA P-256, r‖s)."""
    peer = Peer.new("standard")
    body = json.dumps({"id": peer.id, "name": "standard", "cert": peer.cert, "port": 7070})
    headers: dict[str, str] = {"Content-Type": "application/json"}
    message = RequestMessage(method="POST", url="http://registry/register", headers=headers)
    created = datetime.datetime.fromtimestamp(int(time.time()), tz=datetime.UTC)
    common: dict[str, Any] = {
        "created": created,
        "nonce": "standard-client-nonce",
        "covered_component_ids": ("@method", "@path", "content-digest"),
        "body": body.encode(),
    }
    HTTPMessageSigner(
        signature_algorithm=algorithms.HMAC_SHA256,
        key_resolver=KeyResolver({"p2p": SECRET.encode()}),
    ).sign(message, key_id="p2p", label="sig", **common)
    HTTPMessageSigner(
        signature_algorithm=algorithms.ECDSA_P256_SHA256,
        key_resolver=KeyResolver({peer.id: peer.key}),
    ).sign(
        message,
        key_id=peer.id,
        label="member",
        append_if_signature_exists=True,
        use_existing_digest=True,
        **common,
    )
    app = RegistryApp(Signer(SECRET), MemoryStore(), RegistryMetrics())
    fields = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    answer = await app.handle(Request("POST", "/register", fields, body.encode(), "192.0.2.1"))
    assert answer.status == 200, answer.body
    assert len(json.loads(answer.body)["lease"]) == 22
