"""A ``bad signature`` says which part failed (docs/protocol.md §2.3).

The messages are built by hand, as another implementation would build them
(RFC 9421 §2.5), each wrong in one part; the registry's 401 names that part,
and only a MAC that does not match gets the advice about the secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest

from p2pcommon.http.events import Request
from p2pcommon.signing.signer import AuthError, Signer
from registryd.app import RegistryApp
from registryd.metrics import RegistryMetrics
from registryd.store import MemoryStore

SECRET = "network-secret-for-tests"
BODY = b'{"id":"x"}'
DIGEST = "sha-256=:" + base64.b64encode(hashlib.sha256(BODY).digest()).decode() + ":"
REQUIRED = ("@method", "@path", "content-digest")
HOST = "registry.example:7000"


def hand_signed(
    *,
    components: tuple[str, ...] = REQUIRED,
    params: str | None = None,
    label: str = "sig",
    secret: str = SECRET,
    signed_host: str = HOST,
    second_label: str | None = None,
) -> list[tuple[str, str]]:
    """Content-Digest, Signature-Input and Signature of ``POST /heartbeat``, by hand."""
    created = int(time.time())
    params = params or f';created={created};keyid="p2p";alg="hmac-sha256";nonce="n-{created}"'
    values = {
        "@method": "POST",
        "@path": "/heartbeat",
        "@authority": signed_host,
        "@status": "200",
        "content-digest": DIGEST,
        "content-type": "application/json",  # covered, but never sent
    }
    inner = "(" + " ".join(f'"{c}"' for c in components) + ")" + params
    lines = [f'"{c}": {values[c]}' for c in components]
    base = "\n".join([*lines, f'"@signature-params": {inner}'])
    mac = base64.b64encode(hmac.digest(secret.encode(), base.encode(), "sha256")).decode()
    signature_input, signature = f"{label}={inner}", f"{label}=:{mac}:"
    if second_label is not None:
        signature_input += f", {second_label}={inner}"
        signature += f", {second_label}=:{mac}:"
    return [
        ("Content-Digest", DIGEST),
        ("Signature-Input", signature_input),
        ("Signature", signature),
    ]


def refusal(fields: list[tuple[str, str]], host: str | None = HOST) -> AuthError:
    headers = [*fields, *([("Host", host)] if host is not None else [])]
    with pytest.raises(AuthError) as caught:
        Signer(SECRET).verify_request("POST", "/heartbeat", headers, BODY, now=time.time())
    assert caught.value.reason == "bad signature"
    return caught.value


NOW = int(time.time())
PARAMS = ';created={};keyid="{}";alg="{}";nonce="{}"'


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        (hand_signed(label="other"), "labelled 'other': label it 'sig'"),
        (hand_signed(second_label="extra"), "exactly one signature"),
        (hand_signed(components=("@method", "content-digest")), 'cover the component "@path"'),
        (hand_signed(components=("@method", "@path")), 'cover the component "content-digest"'),
        (hand_signed(components=(*REQUIRED, "@status")), '"@status" belongs to answers'),
        (
            hand_signed(params=f';created={NOW};keyid="p2p";alg="hmac-sha256"'),
            "lacks the parameter 'nonce'",
        ),
        (
            hand_signed(params=';keyid="p2p";alg="hmac-sha256";nonce="n"'),
            "lacks the parameter 'created'",
        ),
        (
            hand_signed(params=PARAMS.format(NOW, "p2p", "hmac-sha256", "n") + ";foo=1"),
            "the parameter 'foo', which p2p does not use",
        ),
        (
            hand_signed(params=PARAMS.format(NOW, "someone", "hmac-sha256", "n")),
            "keyid 'someone'",
        ),
        (hand_signed(params=PARAMS.format(NOW, "p2p", "hmac-sha512", "n")), "alg 'hmac-sha512'"),
        (hand_signed(params=PARAMS.format(NOW, "p2p", "hmac-sha256", "n" * 65)), "1-64 characters"),
        (hand_signed(params=PARAMS.format(NOW, "p2p", "hmac-sha256", "")), "1-64 characters"),
        (hand_signed(components=(*REQUIRED, "content-type")), '"content-type", which cannot be'),
    ],
    ids=[
        "label",
        "two-signatures",
        "no-path",
        "no-digest",
        "status-in-request",
        "no-nonce",
        "no-created",
        "unknown-parameter",
        "keyid",
        "alg",
        "long-nonce",
        "empty-nonce",
        "absent-header",
    ],
)
def test_each_part_of_a_bad_signature_is_named(fields: list[tuple[str, str]], names: str) -> None:
    error = refusal(fields)
    assert names in error.hint
    assert "secret is the same" not in error.hint  # that advice is for the MAC only


def test_authority_without_a_host_cannot_be_derived() -> None:
    error = refusal(hand_signed(components=(*REQUIRED, "@authority")), host=None)
    assert '"@authority", which cannot be derived' in error.hint
    assert "Host" in error.hint


@pytest.mark.parametrize(
    "fields",
    [
        hand_signed(secret="another-secret-entirely"),
        hand_signed(components=(*REQUIRED, "@authority"), signed_host="proxy.example:80"),
    ],
    ids=["wrong-secret", "authority-differs"],
)
def test_only_a_mac_that_does_not_match_points_at_the_secret(fields: list[tuple[str, str]]) -> None:
    error = refusal(fields)
    assert "secret is the same as the registry's" in error.hint
    assert '"@authority" differs from what the registry saw' in error.hint


def test_one_signature_field_without_the_other_is_named() -> None:
    digest, signature_input, _ = hand_signed()
    assert "no Signature field" in refusal([digest, signature_input]).hint


async def test_the_registry_401_names_the_failing_part() -> None:
    app = RegistryApp(Signer(SECRET), MemoryStore(), RegistryMetrics())
    fields = hand_signed(label="mine")
    headers = [(name.lower().encode(), value.encode()) for name, value in fields]
    answer = await app.handle(Request("POST", "/heartbeat", headers, BODY, "192.0.2.8"))
    assert answer.status == 401
    payload = json.loads(answer.body)
    assert payload["error"] == "bad signature"  # the API's reason stays
    assert "label it 'sig'" in payload["message"]
    assert "secret" not in payload["message"]
