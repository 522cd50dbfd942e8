"""Every value of docs/protocol.md §2.5 (the worked example), read from the document itself.

The register and the heartbeat are signed by our signing code from the
example's inputs and answered by the real registry app; both must produce
exactly what the document shows, and each signature base shown must give
the signature shown (HMAC-SHA256 by hand; the member's ECDSA signature
verified with the certificate's key), so that an implementer who follows
the example byte for byte interoperates.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from p2pcommon.http.events import Request, Response
from p2pcommon.signing.member_proof import (
    add_member_signature,
    member_params,
    sign_base,
    signature_base,
)
from p2pcommon.signing.signer import Signer
from registryd.app import RegistryApp
from registryd.metrics import RegistryMetrics
from registryd.pace import Pace
from registryd.store import MemoryStore

DOC = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"


@dataclass(frozen=True)
class Example:
    secret: str
    key: ec.EllipticCurvePrivateKey
    cert_pem: str
    id: str
    created: int
    nonce: str
    register_body: bytes
    register_answer: bytes
    #: The jitter the registry draws for both answers, as a fraction.
    jitter: float
    heartbeat_body: bytes
    heartbeat_created: int
    heartbeat_nonce: str
    heartbeat_answer: bytes
    #: The fenced blocks, in order: certificate, register body, its digest, sig's
    #: base, member's base, the signature fields, the answer's fields, the
    #: heartbeat's base, its fields, its answer's fields, that answer's base.
    blocks: list[str]


def one(pattern: str, text: str) -> str:
    found = re.findall(pattern, text, re.DOTALL)
    assert len(found) == 1, f"§2.5 should state {pattern!r} once, found {found}"
    return str(found[0])


@pytest.fixture(scope="module")
def example() -> Example:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("### 2.5 Worked example") : text.index("## 3. Registry API")]
    blocks = [block.strip("\n") for block in re.findall(r"```\n(.*?)```", section, re.DOTALL)]
    prose = re.sub(r"```.*?```", "", section, flags=re.DOTALL)
    bodies = re.findall(r"`(\{.*?\})`", prose, re.DOTALL)
    assert len(blocks) == 11 and len(bodies) == 3, (len(blocks), bodies)
    created = re.findall(r"`created=(\d+)`", prose)
    nonces = re.findall(r'`nonce="([^"]+)"`', prose)
    assert len(created) == len(nonces) == 2
    scalar = int(one(r"`d = ([0-9a-f]{64})`", prose), 16)
    return Example(
        secret=one(r"The secret is `([^`]+)`", prose),
        key=ec.derive_private_key(scalar, ec.SECP256R1()),
        cert_pem=blocks[0] + "\n",
        id=one(r"Its id is `([a-z2-7]{52})`", prose),
        created=int(created[0]),
        nonce=nonces[0],
        register_body=blocks[1].encode(),
        register_answer=bodies[0].encode(),
        jitter=float(one(r"draws a jitter of `(\d+(?:\.\d+)?) %`", prose)) / 100,
        heartbeat_body=bodies[1].encode(),
        heartbeat_created=int(created[1]),
        heartbeat_nonce=nonces[1],
        heartbeat_answer=bodies[2].encode(),
        blocks=blocks,
    )


def fields(block: str) -> list[tuple[str, str]]:
    return [
        (name, value) for name, _, value in (line.partition(": ") for line in block.split("\n"))
    ]


def mac(secret: str, base: str) -> str:
    digest = hmac.digest(secret.encode("utf-8"), base.encode("ascii"), "sha256")
    return f"sig=:{base64.b64encode(digest).decode('ascii')}:"


def request(method: str, path: str, shown: list[tuple[str, str]], body: bytes) -> Request:
    headers = [(name.lower().encode(), value.encode()) for name, value in shown]
    return Request(method, path, headers, body, "192.0.2.1")


def test_the_key_certificate_id_and_body_agree(example: Example) -> None:
    cert = x509.load_pem_x509_certificate(example.cert_pem.encode())
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ) == example.key.public_key().public_bytes(serialization.Encoding.DER, spki)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert base64.b32encode(hashlib.sha256(der).digest()).decode().rstrip("=").lower() == example.id
    body = json.loads(example.register_body)
    assert (body["id"], body["cert"]) == (example.id, example.cert_pem)


def test_the_register_is_what_our_signing_writes(example: Example) -> None:
    headers, nonce = Signer(example.secret).sign_request(
        "POST", "/register", example.register_body, now=example.created, nonce=example.nonce
    )
    params = member_params(example.id, example.created, nonce)
    base = signature_base("POST", "/register", headers["Content-Digest"], params)
    add_member_signature(headers, params, sign_base(example.key, base))  # RFC 6979
    assert headers == dict(fields(example.blocks[2]) + fields(example.blocks[5]))
    assert base.decode() == example.blocks[4]


def test_each_register_base_gives_the_signature_shown(example: Example) -> None:
    digest = dict(fields(example.blocks[2]))["Content-Digest"]
    shown = dict(fields(example.blocks[5]))
    sig_input, _, member_input = shown["Signature-Input"].partition(", member=")
    sig_value, _, member_value = shown["Signature"].partition(", member=")
    lines = ['"@method": POST', '"@path": /register', f'"content-digest": {digest}']
    assert example.blocks[3].split("\n") == [
        *lines,
        f'"@signature-params": {sig_input.removeprefix("sig=")}',
    ]
    assert mac(example.secret, example.blocks[3]) == sig_value
    assert example.blocks[4].split("\n") == [*lines, f'"@signature-params": {member_input}']
    raw = base64.b64decode(member_value.strip(":"))
    assert len(raw) == 64
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    public = x509.load_pem_x509_certificate(example.cert_pem.encode()).public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(encode_dss_signature(r, s), example.blocks[4].encode(), ec.ECDSA(hashes.SHA256()))


def assert_answer(
    answer: Response, example: Example, body: bytes, block: str, nonce: str, now: int
) -> None:
    assert (answer.status, answer.body) == (200, body)
    assert answer.headers == fields(block)
    Signer(example.secret).verify_response(200, answer.headers, answer.body, nonce=nonce, now=now)


async def test_the_registry_answers_both_exactly_as_shown(
    example: Example, monkeypatch: pytest.MonkeyPatch
) -> None:
    lease = json.loads(example.register_answer)["lease"]
    monkeypatch.setattr("secrets.token_urlsafe", lambda size: lease)
    store = MemoryStore()
    now = [example.created]
    pace = Pace(jitter=lambda: example.jitter)
    app = RegistryApp(
        Signer(example.secret), store, RegistryMetrics(), pace=pace, clock=lambda: now[0]
    )
    sent = fields(example.blocks[2]) + fields(example.blocks[5])
    answer = await app.handle(request("POST", "/register", sent, example.register_body))
    assert_answer(
        answer, example, example.register_answer, example.blocks[6], example.nonce, now[0]
    )
    now[0] = example.heartbeat_created
    sent = fields(example.blocks[8])
    answer = await app.handle(request("POST", "/heartbeat", sent, example.heartbeat_body))
    assert_answer(
        answer,
        example,
        example.heartbeat_answer,
        example.blocks[9],
        example.heartbeat_nonce,
        now[0],
    )


def test_the_heartbeat_is_what_our_signing_writes(example: Example) -> None:
    assert json.loads(example.heartbeat_body) == {
        "id": example.id,
        "lease": json.loads(example.register_answer)["lease"],
    }
    headers, _ = Signer(example.secret).sign_request(
        "POST",
        "/heartbeat",
        example.heartbeat_body,
        now=example.heartbeat_created,
        nonce=example.heartbeat_nonce,
    )
    shown = dict(fields(example.blocks[8]))
    assert headers == shown
    assert example.blocks[7].split("\n") == [
        '"@method": POST',
        '"@path": /heartbeat',
        f'"content-digest": {shown["Content-Digest"]}',
        f'"@signature-params": {shown["Signature-Input"].removeprefix("sig=")}',
    ]
    assert mac(example.secret, example.blocks[7]) == shown["Signature"]


def test_the_answer_bases_give_the_signatures_shown(example: Example) -> None:
    shown = dict(fields(example.blocks[9]))
    base = example.blocks[10]
    assert base.split("\n") == [
        '"@status": 200',
        f'"content-digest": {shown["Content-Digest"]}',
        f'"@signature-params": {shown["Signature-Input"].removeprefix("sig=")}',
    ]
    assert mac(example.secret, base) == shown["Signature"]
    register = dict(fields(example.blocks[6]))
    assert register["Content-Digest"] == (
        "sha-256=:"
        + base64.b64encode(hashlib.sha256(example.register_answer).digest()).decode()
        + ":"
    )
    register_base = "\n".join(
        [
            '"@status": 200',
            f'"content-digest": {register["Content-Digest"]}',
            f'"@signature-params": {register["Signature-Input"].removeprefix("sig=")}',
        ]
    )
    assert mac(example.secret, register_base) == register["Signature"]
