"""Every value of docs/protocol.md §2.4 (the worked example), read from the document itself.

The request is signed by our signing code and answered by the real registry
app; both must produce exactly what the document shows, and each signature
base shown must give the signature shown (HMAC-SHA256 by hand), so that an
implementer who follows the example byte for byte interoperates.
"""

from __future__ import annotations

import base64
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import registryd.store
from p2pcommon.httpserver import Request
from p2pcommon.signing import Signer
from registryd.app import RegistryApp
from registryd.metrics import RegistryMetrics
from registryd.store import MemoryStore

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


@dataclass(frozen=True)
class Example:
    secret: str
    created: int
    nonce: str
    method: str
    path: str
    body: bytes
    status: int
    version: int
    answer_body: bytes
    #: The fenced blocks, in order: request digest, request base, request
    #: signature fields, answer fields, answer base.
    blocks: list[str]


def one(pattern: str, text: str) -> str:
    found = re.findall(pattern, text, re.DOTALL)
    assert len(found) == 1, f"§2.4 should state {pattern!r} once, found {found}"
    return str(found[0])


@pytest.fixture(scope="module")
def example() -> Example:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("### 2.4 Worked example") : text.index("## 3. Registry API")]
    prose = re.sub(r"```.*?```", "", section, flags=re.DOTALL)
    bodies = re.findall(r"`(\{.*?\})`", prose, re.DOTALL)
    assert len(bodies) == 2, bodies
    return Example(
        secret=one(r"The secret is `([^`]+)`", prose),
        created=int(one(r"`created=(\d+)`", prose)),
        nonce=one(r'`nonce="([^"]+)"`', prose),
        method=one(r"The request is `(\w+) \S+`", prose),
        path=one(r"The request is `\w+ (\S+)`", prose),
        body=bodies[0].encode(),
        status=int(one(r"answers `(\d+)`", prose)),
        version=int(one(r"being `(\d+)`", prose)),
        answer_body=bodies[1].encode(),
        blocks=[block.strip("\n") for block in re.findall(r"```\n(.*?)```", section, re.DOTALL)],
    )


def fields(block: str) -> list[tuple[str, str]]:
    return [
        (name, value) for name, _, value in (line.partition(": ") for line in block.split("\n"))
    ]


def mac(secret: str, base: str) -> str:
    digest = hmac.digest(secret.encode("utf-8"), base.encode("ascii"), "sha256")
    return f"sig=:{base64.b64encode(digest).decode('ascii')}:"


def test_the_request_is_what_our_signing_writes(example: Example) -> None:
    headers, nonce = Signer(example.secret).sign_request(
        example.method, example.path, example.body, now=example.created, nonce=example.nonce
    )
    assert nonce == example.nonce
    shown = dict(fields(example.blocks[0]) + fields(example.blocks[2]))
    assert headers == shown


def test_the_request_base_gives_the_signature_shown(example: Example) -> None:
    digest, base, signature_fields = example.blocks[0], example.blocks[1], example.blocks[2]
    signature = dict(fields(signature_fields))
    assert base.split("\n") == [
        f'"@method": {example.method}',
        f'"@path": {example.path}',
        f'"content-digest": {dict(fields(digest))["Content-Digest"]}',
        f'"@signature-params": {signature["Signature-Input"].removeprefix("sig=")}',
    ]
    assert mac(example.secret, base) == signature["Signature"]


async def test_the_registry_answers_exactly_as_shown(
    example: Example, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The version a store created empty has after one member joined (§3.4).
    monkeypatch.setattr(registryd.store, "start_version", lambda: example.version - 1)
    store = MemoryStore(30.0)
    member = re.search(rb'"id":"([a-z2-7]{52})"', example.body)
    assert member is not None
    joined = example.created - 5.0
    await store.register(member[1].decode(), "example", "PEM", ("192.0.2.1:7070",), joined)
    app = RegistryApp(
        Signer(example.secret), store, RegistryMetrics(), clock=lambda: example.created
    )
    sent = fields(example.blocks[0]) + fields(example.blocks[2])
    headers = [(name.lower().encode(), value.encode()) for name, value in sent]
    answer = await app.handle(
        Request(example.method, example.path, headers, example.body, "192.0.2.1")
    )
    assert (answer.status, answer.body) == (example.status, example.answer_body)
    assert answer.headers == fields(example.blocks[3])
    Signer(example.secret).verify_response(
        answer.status, answer.headers, answer.body, nonce=example.nonce, now=example.created
    )


def test_the_answer_base_gives_the_signature_shown(example: Example) -> None:
    shown = dict(fields(example.blocks[3]))
    base = example.blocks[4]
    assert base.split("\n") == [
        f'"@status": {example.status}',
        f'"content-digest": {shown["Content-Digest"]}',
        f'"@signature-params": {shown["Signature-Input"].removeprefix("sig=")}',
    ]
    assert mac(example.secret, base) == shown["Signature"]
