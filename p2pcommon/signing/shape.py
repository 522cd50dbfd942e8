"""The one shape of signature p2p writes, signed and verified without the package.

The wire constants of docs/protocol.md §2 live here; ``p2pcommon.signing.signer`` is
the interface and falls back to the http-message-signatures package for
everything this module does not accept.

Why: parsing and re-serialising Structured Fields in the package was most of
a registry heartbeat's CPU.  A message in the exact shape the package writes
for us (canonical integers, strings that need no escaping, one field line of
each signature field) has a signature base that can be spelled out from its
fields as received: the patterns below make it the very base the package
would rebuild.  Verification here only ever accepts; anything else, and
anything it would refuse, is left to the package (None), so that every
verdict and every reason is the package's.  Signing here writes byte for
byte what the package writes.  Tests compare both ways on a corpus.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
from collections.abc import Sequence
from typing import Final

KEY_ID: Final = "p2p"
LABEL: Final = "sig"
ALGORITHM: Final = "hmac-sha256"
REQUEST_COMPONENTS: Final = ("@method", "@path", "content-digest")
RESPONSE_COMPONENTS: Final = ("@status", "content-digest")
#: How far ``created`` may be from the verifier's clock, either way (seconds).
MAX_SKEW: Final = 60
#: Nonces longer than this are refused, which bounds the replay cache.
MAX_NONCE_LENGTH: Final = 64

#: Structured Field String characters that serialise as themselves (not '"' nor '\\').
_PLAIN = r"[ !#-\[\]-~]"
_PARAMS = (
    rf';created=(0|[1-9][0-9]{{0,9}});keyid="{KEY_ID}";alg="{ALGORITHM}"'
    rf';nonce="({_PLAIN}{{1,{MAX_NONCE_LENGTH}}})"'
)
_REQUEST_INPUT = re.compile(rf'{LABEL}=(\("@method" "@path" "content-digest"\){_PARAMS})')
_RESPONSE_INPUT = re.compile(rf'{LABEL}=(\("@status" "content-digest"\){_PARAMS})')
_SIGNATURE = re.compile(rf"{LABEL}=:([A-Za-z0-9+/]{{43}}=):")
_DIGEST = re.compile(r"sha-256=:[A-Za-z0-9+/]{43}=:")
_NONCE = re.compile(rf"{_PLAIN}{{1,{MAX_NONCE_LENGTH}}}")
_METHOD = re.compile(r"[A-Z]+")
#: A target inside the package's URL grammar, without percent escapes; group 1 is ``@path``.
_TARGET = re.compile(r"((?:/[A-Za-z0-9._~-]*)+)(?:\?[A-Za-z0-9._~!$&'()*+,;=:@/?-]*)?")
_PICKED: Final = {"signature-input": 0, "signature": 1, "content-digest": 2}

Fields = Sequence[tuple[str | bytes, str | bytes]]


def content_digest(body: bytes) -> str:
    """``sha-256=:…:`` over ``body``, as the package's ``ContentDigest.create`` writes it."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode('ascii')}:"


def _pick(headers: Fields) -> tuple[str, str, str] | None:
    """Signature-Input, Signature and Content-Digest, each one field line; else None.

    None too when a ``Host`` has a percent sign: the package may refuse to
    build the request's URL from it (a malformed escape), so it decides.
    """
    picked: list[str | None] = [None, None, None]
    for raw_name, raw_value in headers:
        name = (raw_name.decode("latin-1") if isinstance(raw_name, bytes) else raw_name).lower()
        index = _PICKED.get(name)
        value = raw_value.decode("latin-1") if isinstance(raw_value, bytes) else raw_value
        if index is not None:
            if picked[index] is not None:
                return None
            picked[index] = value
        elif name == "host" and "%" in value:
            return None
    sig_input, signature, digest = picked
    if sig_input is None or signature is None or digest is None:
        return None
    return sig_input, signature, digest


class ExactShape:
    """Signs and verifies messages of our one shape with ``key``; None leaves it to the package."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def sign_request(
        self, method: str, path: str, body: bytes, *, nonce: str, now: float
    ) -> dict[str, str] | None:
        target = _TARGET.fullmatch(path)
        if target is None or _METHOD.fullmatch(method) is None:
            return None
        line = f'"@method": {method}\n"@path": {target[1]}'
        return self._sign(line, REQUEST_COMPONENTS, body, nonce, now)

    def sign_response(
        self, status: int, body: bytes, *, nonce: str, now: float
    ) -> dict[str, str] | None:
        return self._sign(f'"@status": {status}', RESPONSE_COMPONENTS, body, nonce, now)

    def verify_request(
        self, method: str, target: str, headers: Fields, body: bytes, *, now: float, scheme: str
    ) -> tuple[str, int] | None:
        """(nonce, created) if the request is authentic and fresh; None: ask the package."""
        match = _TARGET.fullmatch(target)
        if match is None or _METHOD.fullmatch(method) is None or scheme not in ("http", "https"):
            return None
        line = f'"@method": {method}\n"@path": {match[1]}'
        return self._verify(line, _REQUEST_INPUT, headers, body, now)

    def verify_response(
        self, status: int, headers: Fields, body: bytes, *, now: float
    ) -> tuple[str, int] | None:
        return self._verify(f'"@status": {status}', _RESPONSE_INPUT, headers, body, now)

    def _sign(
        self, line: str, components: tuple[str, ...], body: bytes, nonce: str, now: float
    ) -> dict[str, str] | None:
        created = int(now)
        if _NONCE.fullmatch(nonce) is None or not 0 <= created < 10**10:
            return None
        digest = content_digest(body)
        covered = " ".join(f'"{component}"' for component in components)
        params = f'({covered});created={created};keyid="{KEY_ID}";alg="{ALGORITHM}";nonce="{nonce}"'
        mac = self._mac(line, digest, params)
        # In the order the package adds them.
        return {
            "Content-Digest": digest,
            "Signature-Input": f"{LABEL}={params}",
            "Signature": f"{LABEL}=:{base64.b64encode(mac).decode('ascii')}:",
        }

    def _verify(
        self, line: str, pattern: re.Pattern[str], headers: Fields, body: bytes, now: float
    ) -> tuple[str, int] | None:
        picked = _pick(headers)
        if picked is None:
            return None
        sig_input, signature, digest = picked
        params = pattern.fullmatch(sig_input)
        mac = _SIGNATURE.fullmatch(signature)
        if params is None or mac is None or _DIGEST.fullmatch(digest) is None:
            return None
        created = int(params[2])
        # A stale message, a wrong digest or MAC: the package says which (and why).
        if abs(math.floor(now) - created) > MAX_SKEW or digest != content_digest(body):
            return None
        expected = self._mac(line, digest, params[1])
        if not hmac.compare_digest(expected, base64.b64decode(mac[1])):
            return None
        return params[3], created

    def _mac(self, line: str, digest: str, params: str) -> bytes:
        """The MAC over the signature base (RFC 9421 §2.5) of our components."""
        base = f'{line}\n"content-digest": {digest}\n"@signature-params": {params}'
        return hmac.digest(self._key, base.encode("ascii"), "sha256")
