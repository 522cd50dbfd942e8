"""HTTP Message Signatures (RFC 9421) with the shared secret, per docs/protocol.md §2.

Requests carry ``Content-Digest`` (RFC 9530) and one signature labelled
``sig`` over ``("@method" "@path" "content-digest")`` with ``created``,
``nonce``, ``keyid="p2p"`` and ``alg="hmac-sha256"``.  A signature may cover
more: header fields, and the derived components of RFC 9421 §2.2, which the
verifier derives from the request as received (``@authority`` from its
``Host`` header).  Answers are signed the same way over
``("@status" "content-digest")``, echoing the request's nonce.

Messages in the exact shape we write are signed and verified by
``p2pcommon.signing.shape`` (the package's Structured Field parsing was most of a
heartbeat's cost); everything else, and every refusal, by the package.

Everything here is pure (the caller passes ``now``), so that the registry,
p2pd and the tests share one implementation and a fake clock works.
"""

from __future__ import annotations

import base64
import datetime
import hmac
import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from http_message_signatures import HTTPMessageSigner, HTTPMessageVerifier

from p2pcommon.signing.messages import (
    NO_AUTHORITY,
    HeaderView,
    RequestMessage,
    ResponseMessage,
    SecretResolver,
    as_str_fields,
    package_classes,
    parse_signature_field,
    request_authority,
)
from p2pcommon.signing.refusals import BAD_SIGNATURE as BAD_SIGNATURE
from p2pcommon.signing.refusals import DIGEST_MISMATCH as DIGEST_MISMATCH
from p2pcommon.signing.refusals import MISSING_SIGNATURE as MISSING_SIGNATURE
from p2pcommon.signing.refusals import REPLAYED as REPLAYED
from p2pcommon.signing.refusals import REQUIRED_PARAMETERS as REQUIRED_PARAMETERS
from p2pcommon.signing.refusals import STALE as STALE
from p2pcommon.signing.refusals import AuthError as AuthError
from p2pcommon.signing.refusals import bad_signature, check_shape, package_refusal
from p2pcommon.signing.shape import ALGORITHM as ALGORITHM
from p2pcommon.signing.shape import KEY_ID as KEY_ID
from p2pcommon.signing.shape import LABEL as LABEL
from p2pcommon.signing.shape import MAX_NONCE_LENGTH as MAX_NONCE_LENGTH
from p2pcommon.signing.shape import MAX_SKEW as MAX_SKEW
from p2pcommon.signing.shape import REQUEST_COMPONENTS as REQUEST_COMPONENTS
from p2pcommon.signing.shape import RESPONSE_COMPONENTS as RESPONSE_COMPONENTS
from p2pcommon.signing.shape import ExactShape
from p2pcommon.signing.shape import content_digest as content_digest

#: Derived components (RFC 9421 §2.2) a request signature may cover besides the
#: required ones, for docs/protocol.md §2.1; any header field may be covered too.
EXTRA_REQUEST_COMPONENTS: Final = (
    "@authority",
    "@scheme",
    "@target-uri",
    "@request-target",
    "@query",
    "@query-param",
)
#: The shortest shared secret accepted anywhere.
MIN_SECRET_LENGTH: Final = 8


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


def _datetime(now: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(int(now), tz=datetime.UTC)


@dataclass(frozen=True)
class Verified:
    nonce: str
    created: int


class Signer:
    """Signs and verifies messages with one shared secret."""

    def __init__(self, secret: str) -> None:
        if len(secret) < MIN_SECRET_LENGTH:
            raise ValueError(f"the shared secret must have at least {MIN_SECRET_LENGTH} characters")
        self._key = secret.encode("utf-8")
        self._exact = ExactShape(self._key)

    @cached_property
    def _signer(self) -> HTTPMessageSigner:
        from http_message_signatures import HTTPMessageSigner, algorithms

        return HTTPMessageSigner(
            signature_algorithm=algorithms.HMAC_SHA256, key_resolver=SecretResolver(self._key)
        )

    @cached_property
    def _verifier(self) -> HTTPMessageVerifier:
        from http_message_signatures import algorithms

        components, verifier = package_classes()
        return verifier(
            signature_algorithm=algorithms.HMAC_SHA256,
            key_resolver=SecretResolver(self._key),
            component_resolver_class=components,
        )

    # -- requests ---------------------------------------------------------

    def sign_request(
        self, method: str, path: str, body: bytes, *, now: float, nonce: str | None = None
    ) -> tuple[dict[str, str], str]:
        """Headers to send (Content-Digest, Signature-Input, Signature) and the nonce used."""
        nonce = nonce or new_nonce()
        exact = self._exact.sign_request(method, path, body, nonce=nonce, now=now)
        if exact is not None:
            return exact, nonce
        headers: dict[str, str] = {}
        message = RequestMessage(method=method, url=f"http://registry{path}", headers=headers)
        self._sign(message, REQUEST_COMPONENTS, body, nonce=nonce, now=now)
        return headers, nonce

    def verify_request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str | bytes, str | bytes]],
        body: bytes,
        *,
        now: float,
        scheme: str = "http",
    ) -> Verified:
        """Check a request's digest and signature; raise AuthError with the reason.

        ``target`` is the request target as received (the path, with the query
        if any), ``scheme`` the one the request came in by.  Covered derived
        components are derived from them and from the ``Host`` header as
        RFC 9421 §2.2 says, so that a standard client may cover more than the
        required three.  Replay detection needs shared state, so the caller
        checks the returned nonce against its cache.
        """
        fields = list(headers)
        exact = self._exact.verify_request(method, target, fields, body, now=now, scheme=scheme)
        if exact is not None:
            return Verified(*exact)
        return self._library_verify_request(method, target, fields, body, now=now, scheme=scheme)

    def _library_verify_request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str | bytes, str | bytes]],
        body: bytes,
        *,
        now: float,
        scheme: str,
    ) -> Verified:
        view = HeaderView(as_str_fields(headers))
        authority = request_authority(view.get("host"))
        message = RequestMessage(
            method=method,
            url=f"{scheme}://{authority or NO_AUTHORITY}{target}",
            headers=view,
            has_authority=authority is not None,
        )
        return self._verify(message, REQUEST_COMPONENTS, body, now=now)

    # -- responses --------------------------------------------------------

    def sign_response(self, status: int, body: bytes, *, nonce: str, now: float) -> dict[str, str]:
        exact = self._exact.sign_response(status, body, nonce=nonce, now=now)
        if exact is not None:
            return exact
        headers: dict[str, str] = {}
        message = ResponseMessage(status_code=status, headers=headers)
        self._sign(message, RESPONSE_COMPONENTS, body, nonce=nonce, now=now)
        return headers

    def verify_response(
        self,
        status: int,
        headers: Iterable[tuple[str | bytes, str | bytes]],
        body: bytes,
        *,
        nonce: str,
        now: float,
    ) -> None:
        """Check an answer is ours, fresh and answers the request with ``nonce``."""
        fields = list(headers)
        exact = self._exact.verify_response(status, fields, body, now=now)
        if exact is not None:
            verified = Verified(*exact)
        else:
            verified = self._library_verify_response(status, fields, body, now=now)
        if not hmac.compare_digest(verified.nonce, nonce):
            raise bad_signature("the answer does not echo the nonce of our request")

    def _library_verify_response(
        self,
        status: int,
        headers: Iterable[tuple[str | bytes, str | bytes]],
        body: bytes,
        *,
        now: float,
    ) -> Verified:
        view = HeaderView(as_str_fields(headers))
        return self._verify(
            ResponseMessage(status_code=status, headers=view), RESPONSE_COMPONENTS, body, now=now
        )

    # -- shared -----------------------------------------------------------

    def _sign(
        self,
        message: RequestMessage | ResponseMessage,
        components: tuple[str, ...],
        body: bytes,
        *,
        nonce: str,
        now: float,
    ) -> None:
        # prepare() builds the signature base and sets Content-Digest; the MAC
        # and the two headers are then set here rather than by apply(), which
        # would parse and rebuild the base we just built to check that the
        # message did not change meanwhile (it cannot: it is ours, in hand) —
        # half of the signing cost, measured under registry load.  A test
        # checks the headers are byte for byte those of the library's sign().
        prepared = self._signer.prepare(
            message,
            key_id=KEY_ID,
            created=_datetime(now),
            nonce=nonce,
            label=LABEL,
            covered_component_ids=components,
            body=body,
        )
        mac = hmac.digest(self._key, prepared.signature_base, "sha256")
        message.headers["Signature-Input"] = f"{LABEL}={prepared.signature_params}"
        message.headers["Signature"] = f"{LABEL}=:{base64.b64encode(mac).decode('ascii')}:"

    @staticmethod
    def _check_digest(view: HeaderView, body: bytes) -> None:
        from http_message_signatures import ContentDigest, HTTPMessageSignaturesException

        value = view.get("content-digest")
        if value is None:
            raise AuthError(DIGEST_MISMATCH, "no Content-Digest")
        try:
            ContentDigest.verify(value, body)
        except HTTPMessageSignaturesException as exc:
            raise AuthError(DIGEST_MISMATCH, str(exc)) from None

    def _verify(
        self,
        message: RequestMessage | ResponseMessage,
        components: tuple[str, ...],
        body: bytes,
        *,
        now: float,
    ) -> Verified:
        headers: HeaderView = message.headers
        if "signature-input" not in headers and "signature" not in headers:
            raise AuthError(MISSING_SIGNATURE)
        # The digest is checked before the MAC: it is cheap and needs no secret.
        self._check_digest(headers, body)
        from cryptography.exceptions import InvalidSignature as MacMismatch
        from http_message_signatures import HTTPMessageSignaturesException

        # The shape before the MAC, so that each refusal names its part.
        check_shape(
            headers.get("signature-input"),
            headers.get("signature"),
            components,
            request=isinstance(message, RequestMessage),
            parse=parse_signature_field,
        )
        try:
            results = self._verifier.verify(message, max_age=None, require_components=components)
        except HTTPMessageSignaturesException as exc:
            mac_failed = isinstance(exc.__cause__, MacMismatch)
            raise package_refusal(exc, message.unresolved, mac_failed) from None
        (result,) = results
        params = result.parameters
        nonce = params["nonce"]
        created = params["created"]
        assert isinstance(nonce, str) and isinstance(created, int)  # checked by check_shape
        # ``created`` is whole seconds, so compare whole seconds.
        if abs(math.floor(now) - created) > MAX_SKEW:
            raise AuthError(STALE, f"created {created} is {now - created:+.0f} s from now")
        return Verified(nonce=nonce, created=created)
