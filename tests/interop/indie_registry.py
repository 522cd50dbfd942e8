"""The independent peer's registry client, from docs/protocol.md §2 and §3 alone.

Requests are signed by hand (§2.1: Content-Digest, then the RFC 9421
signature base, HMAC-SHA256 keyed by the secret's UTF-8 bytes; a register
also by the member's own key, §2.4) and every signed answer is verified as
§2.2 says before anything in it is believed.  Standard library, and
``cryptography`` for the member's ECDSA signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

#: §2.2: the answers that are signed; the others are written before authentication.
SIGNED_STATUSES = (200, 400, 403, 404)
MAX_SKEW = 60
_ANSWER_INPUT = re.compile(r'sig=\("@status" "content-digest"\)((?:;[a-z]+=(?:"[^"]*"|[0-9]+))+)')
_PARAMETER = re.compile(r';([a-z]+)=(?:"([^"]*)"|([0-9]+))')


class RegistryRefused(Exception):
    """The registry answered, but not with a signed 200."""


class ForgedAnswer(Exception):
    """An answer that fails a check of §2.2: it must be ignored."""


def content_digest(body: bytes) -> str:
    """§2.1: ``sha-256=:<base64 of SHA-256(body)>:``, also for an empty body."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii") + ":"


def mac(secret: str, base: str) -> str:
    digest = hmac.digest(secret.encode("utf-8"), base.encode("ascii"), "sha256")
    return base64.b64encode(digest).decode("ascii")


@dataclass
class Answer:
    status: int
    payload: Any


def base_of(method: str, path: str, digest: str, params: str) -> str:
    """§2.1: "@path" is the path without the query; the base has no final newline."""
    return "\n".join(
        [
            f'"@method": {method}',
            f'"@path": {path}',
            f'"content-digest": {digest}',
            f'"@signature-params": {params}',
        ]
    )


class Registry:
    """Signed calls to one registry URL."""

    def __init__(self, url: str, secret: str) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        self._host, self._port, self._secret = parts.hostname, parts.port, secret

    def call(
        self,
        method: str,
        path: str,
        payload: Any = None,
        query: str = "",
        member: tuple[str, ec.EllipticCurvePrivateKey] | None = None,
    ) -> Answer:
        """One signed request (§2.1) and its verified answer (§2.2); with ``member``
        (our id and key), the register's second signature (§2.4)."""
        body = b"" if payload is None else json.dumps(payload).encode()
        created, nonce = int(time.time()), secrets.token_urlsafe(16)
        digest = content_digest(body)
        components = '("@method" "@path" "content-digest")'
        params = f'{components};created={created};keyid="p2p";alg="hmac-sha256";nonce="{nonce}"'
        headers = {
            "Content-Type": "application/json",
            "Content-Digest": digest,
            "Signature-Input": f"sig={params}",
            "Signature": f"sig=:{mac(self._secret, base_of(method, path, digest, params))}:",
        }
        if member is not None:
            # §2.4: same components, created and nonce; keyid our id; raw r‖s (RFC 9421 §3.3.4).
            member_id, key = member
            params = (
                f'{components};created={created};keyid="{member_id}";alg="ecdsa-p256-sha256"'
                f';nonce="{nonce}"'
            )
            der = key.sign(
                base_of(method, path, digest, params).encode(), ec.ECDSA(hashes.SHA256())
            )
            r, s = decode_dss_signature(der)
            raw = base64.b64encode(r.to_bytes(32, "big") + s.to_bytes(32, "big")).decode()
            headers["Signature-Input"] += f", member={params}"
            headers["Signature"] += f", member=:{raw}:"
        connection = http.client.HTTPConnection(self._host, self._port, timeout=10)
        try:
            connection.request(method, path + query, body=body, headers=headers)
            response = connection.getresponse()
            answer_body = response.read()
            fields = {name.lower(): value for name, value in response.getheaders()}
        finally:
            connection.close()
        if response.status not in SIGNED_STATUSES:
            raise RegistryRefused(f"{method} {path}: {response.status} {answer_body[:300]!r}")
        self._verify(response.status, fields, answer_body, nonce)
        if response.status != 200:
            raise RegistryRefused(f"{method} {path}: {response.status} {answer_body[:300]!r}")
        return Answer(response.status, json.loads(answer_body))

    def _verify(self, status: int, fields: dict[str, str], body: bytes, nonce: str) -> None:
        """§2.2: the digest, the MAC, the parameters, created and our nonce."""
        digest = fields.get("content-digest")
        if digest != content_digest(body):
            raise ForgedAnswer(f"Content-Digest {digest!r} does not match the body")
        signature_input = fields.get("signature-input", "")
        shape = _ANSWER_INPUT.fullmatch(signature_input)
        if shape is None:
            raise ForgedAnswer(f"unexpected Signature-Input {signature_input!r}")
        params = {
            name: text if text or not number else int(number)
            for name, text, number in _PARAMETER.findall(shape[1])
        }
        if params.get("keyid") != "p2p" or params.get("alg") != "hmac-sha256":
            raise ForgedAnswer(f"unexpected keyid or alg in {signature_input!r}")
        created = params.get("created")
        if not isinstance(created, int) or abs(int(time.time()) - created) > MAX_SKEW:
            raise ForgedAnswer(f"created {created!r} is not within {MAX_SKEW} s")
        if params.get("nonce") != nonce:
            raise ForgedAnswer("the answer does not echo our nonce")
        base = "\n".join(
            [
                f'"@status": {status}',
                f'"content-digest": {digest}',
                f'"@signature-params": {signature_input.removeprefix("sig=")}',
            ]
        )
        expected = f"sig=:{mac(self._secret, base)}:"
        if not hmac.compare_digest(fields.get("signature", ""), expected):
            raise ForgedAnswer("the answer's MAC does not match")
