"""The lookup example of docs/protocol.md §3.4, read from the document and answered by the app.

The member of §2.5 registers and heartbeats exactly as that example shows;
then its lookup, a resolution of a name that needs percent-encoding, and a
page are signed by our code and by hand (the bases the example names) and
answered by the real registry app.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Any

import pytest

from p2pcommon.http.events import Request, Response
from p2pcommon.signing.signer import Signer
from registryd.app import RegistryApp
from registryd.metrics import RegistryMetrics
from registryd.pace import Pace
from registryd.store import MemoryStore
from tests.p2pcommon.signing.test_worked_example import Example, example, fields, request
from tests.support import Peer

__all__ = ["example"]  # the fixture, shared with §2.5's test

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


@pytest.fixture(scope="module")
def section() -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("**Example.** With the secret and member of §2.5")
    return text[start : text.index("### 3.5 Stores")]


def by_hand(secret: str, method: str, path: str, created: int, nonce: str) -> list[tuple[str, str]]:
    """The three fields of §2.1 over an empty body, computed from the RFCs alone."""
    digest = "sha-256=:" + base64.b64encode(hashlib.sha256(b"").digest()).decode() + ":"
    params = (
        f'("@method" "@path" "content-digest");created={created};keyid="p2p";'
        f'alg="hmac-sha256";nonce="{nonce}"'
    )
    base = f'"@method": {method}\n"@path": {path}\n"content-digest": {digest}\n'
    base += f'"@signature-params": {params}'
    mac = base64.b64encode(hmac.digest(secret.encode(), base.encode(), "sha256")).decode()
    return [
        ("Content-Digest", digest),
        ("Signature-Input", f"sig={params}"),
        ("Signature", f"sig=:{mac}:"),
    ]


async def registered(
    example: Example, monkeypatch: pytest.MonkeyPatch
) -> tuple[RegistryApp, list[float]]:
    """The app after §2.5's register and heartbeat, as shown there."""
    lease = json.loads(example.register_answer)["lease"]
    monkeypatch.setattr("secrets.token_urlsafe", lambda size: lease)
    now = [float(example.created)]
    pace = Pace(jitter=lambda: example.jitter)
    app = RegistryApp(
        Signer(example.secret), MemoryStore(), RegistryMetrics(), pace=pace, clock=lambda: now[0]
    )
    sent = fields(example.blocks[2]) + fields(example.blocks[5])
    assert (
        await app.handle(request("POST", "/register", sent, example.register_body))
    ).status == 200
    now[0] = example.heartbeat_created
    sent = fields(example.blocks[8])
    assert (
        await app.handle(request("POST", "/heartbeat", sent, example.heartbeat_body))
    ).status == 200
    return app, now


def wire(headers: dict[str, str] | list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    items = headers.items() if isinstance(headers, dict) else headers
    return [(k.lower().encode(), v.encode()) for k, v in items]


async def join(app: RegistryApp, secret: str, peer: Peer, now: float) -> None:
    body = json.dumps({"id": peer.id, "name": peer.name, "cert": peer.cert, "port": 7070}).encode()
    # A nonce of our own: secrets.token_urlsafe gives §2.5's lease token here.
    nonce = f"n-{peer.id[:20]}"
    headers, _ = Signer(secret).sign_request("POST", "/register", body, now=now, nonce=nonce)
    peer.add_proof(headers, "POST", "/register", nonce)
    response = await app.handle(Request("POST", "/register", wire(headers), body, "192.0.2.9"))
    assert response.status == 200, response.body


def answer(response: Response) -> Any:
    assert response.status == 200, response.body
    return json.loads(response.body)


async def test_the_lookup_answers_the_record_shown(
    example: Example, section: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, now = await registered(example, monkeypatch)
    path = re.search(r"a lookup of it is\s+`GET (/members/[a-z2-7]{52})`", section)
    assert path is not None and path[1] == f"/members/{example.id}"
    assert f'`"@path": {path[1]}`' in section.replace("\n", " ")
    shown = by_hand(example.secret, "GET", path[1], example.heartbeat_created, "l1")
    assert f"`{shown[0][1]}`" in section  # the empty body's digest
    response = await app.handle(Request("GET", path[1], wire(shown), b"", "192.0.2.1"))
    body = response.body.decode()
    quoted = re.search(r"answered `200`\s+with `(\{.*?\})`", section, re.DOTALL)
    assert quoted is not None
    head, _, tail = quoted[1].partition("…")
    assert body.startswith(head) and body.endswith(tail), body
    assert answer(response)["cert"] == example.cert_pem


async def test_a_name_is_resolved_by_its_percent_encoded_path(
    example: Example, section: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, now = await registered(example, monkeypatch)
    zoe = Peer.new("Zoë")
    await join(app, example.secret, zoe, now[0])
    path = re.search(r"Resolving `Zoë` is `GET (/resolve/\S+)`", section)
    assert path is not None and path[1] == "/resolve/Zo%C3%AB"
    shown = by_hand(example.secret, "GET", path[1], int(now[0]), "r1")
    # Our signer writes the same base for the path as sent, escapes included.
    ours, _ = Signer(example.secret).sign_request("GET", path[1], b"", now=now[0], nonce="r1")
    assert ours == dict(shown)
    resolved = answer(await app.handle(Request("GET", path[1], wire(shown), b"", "h")))
    assert (resolved["query"], [m["id"] for m in resolved["members"]], resolved["more"]) == (
        "Zoë",
        [zoe.id],
        False,
    )


async def test_a_page_is_signed_over_its_path_and_echoes_its_query(
    example: Example, section: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, now = await registered(example, monkeypatch)
    others = [Peer.new(f"p{i}") for i in range(3)]
    for peer in others:
        await join(app, example.secret, peer, now[0])
    assert '`"@path": /members` only' in section.replace("\n", " ")
    ids = sorted([example.id, *(p.id for p in others)])
    target = f"/members?after={ids[1]}&limit=2&certs=0"
    shown = by_hand(example.secret, "GET", "/members", int(now[0]), "p1")
    page = answer(await app.handle(Request("GET", target, wire(shown), b"", "h")))
    assert [m["id"] for m in page["members"]] == ids[2:4]
    assert all("cert" not in m for m in page["members"])
    assert (page["next"], page["after"], page["limit"], page["certs"]) == (None, ids[1], 2, 0)
