"""Our signing against the http-message-signatures package, both ways, and every refusal."""

from __future__ import annotations

import datetime
import json
import time
from dataclasses import dataclass, field

import pytest
from http_message_signatures import (
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    algorithms,
)

from p2pcommon.signing import signer as signing
from p2pcommon.signing.signer import AuthError, Signer

SECRET = "network-secret-for-tests"
BODY = b'{"id":"x"}'


class Keys(HTTPSignatureKeyResolver):
    def resolve_private_key(self, key_id: str) -> bytes:
        return SECRET.encode()

    def resolve_public_key(self, key_id: str) -> bytes:
        return SECRET.encode()


@dataclass
class Message:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Answer:
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)
    request: None = None


def library_signed(
    *,
    components: tuple[str, ...] = ("@method", "@path", "content-digest"),
    nonce: str | None = "abc123",
    created: float | None = None,
    label: str = "sig",
    key_id: str = "p2p",
    body: bytes | None = BODY,
) -> Message:
    message = Message("POST", "http://registry.example/heartbeat")
    signer = HTTPMessageSigner(signature_algorithm=algorithms.HMAC_SHA256, key_resolver=Keys())
    signer.sign(
        message,
        key_id=key_id,
        nonce=nonce,
        label=label,
        created=datetime.datetime.fromtimestamp(created or time.time(), tz=datetime.UTC),
        covered_component_ids=components,
        body=body,
    )
    return message


def with_digest(message: Message) -> Message:
    message.headers["Content-Digest"] = signing.content_digest(BODY)
    return message


def verify(message: Message, body: bytes = BODY, now: float | None = None) -> signing.Verified:
    return Signer(SECRET).verify_request(
        message.method, "/heartbeat", message.headers.items(), body, now=now or time.time()
    )


def test_our_request_signature_verifies_with_the_package_verifier() -> None:
    headers, nonce = Signer(SECRET).sign_request("POST", "/heartbeat", BODY, now=time.time())
    message = Message("POST", "http://anyhost:7000/heartbeat", headers)
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.HMAC_SHA256, key_resolver=Keys())
    (result,) = verifier.verify(
        message,
        require_components=("@method", "@path", "content-digest"),
        body=BODY,
    )
    assert result.label == "sig"
    assert result.parameters["keyid"] == "p2p"
    assert result.parameters["alg"] == "hmac-sha256"
    assert result.nonce == nonce
    assert headers["Content-Digest"].startswith("sha-256=:")


def test_a_request_signed_by_the_package_verifies_with_ours() -> None:
    verified = verify(library_signed())
    assert verified.nonce == "abc123"


def test_empty_body_still_carries_a_content_digest() -> None:
    headers, _ = Signer(SECRET).sign_request("GET", "/clients", b"", now=time.time())
    assert headers["Content-Digest"] == "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
    Signer(SECRET).verify_request("GET", "/clients", headers.items(), b"", now=time.time())


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: Message("POST", "http://r/heartbeat"), "missing signature"),
        (lambda: library_signed(body=b'{"id":"y"}'), "digest mismatch"),
        (lambda: library_signed(components=("@method", "@path"), body=None), "digest mismatch"),
        (
            lambda: with_digest(library_signed(components=("@method", "@path"), body=None)),
            "bad signature",
        ),
        (lambda: library_signed(components=("@method", "content-digest")), "bad signature"),
        (lambda: library_signed(nonce=None), "bad signature"),
        (lambda: library_signed(label="other"), "bad signature"),
        (lambda: library_signed(key_id="someone-else"), "bad signature"),
        (lambda: library_signed(created=time.time() - 61), "stale"),
        (lambda: library_signed(created=time.time() + 61), "stale"),
    ],
    ids=[
        "no-signature",
        "body-changed",
        "no-digest",
        "digest-not-covered",
        "path-not-covered",
        "no-nonce",
        "wrong-label",
        "wrong-keyid",
        "too-old",
        "from-the-future",
    ],
)
def test_refusals_name_their_reason(make: object, reason: str) -> None:
    message = make()  # type: ignore[operator]
    with pytest.raises(AuthError) as caught:
        verify(message)
    assert caught.value.reason == reason
    assert caught.value.hint


def test_a_wrong_secret_is_a_bad_signature() -> None:
    headers, _ = Signer("another-secret-entirely").sign_request(
        "POST", "/heartbeat", BODY, now=time.time()
    )
    with pytest.raises(AuthError) as caught:
        verify(Message("POST", "http://r/heartbeat", headers))
    assert caught.value.reason == "bad signature"


def test_the_method_and_path_are_covered() -> None:
    headers, _ = Signer(SECRET).sign_request("POST", "/leave", BODY, now=time.time())
    with pytest.raises(AuthError) as caught:
        verify(Message("POST", "http://r/heartbeat", headers))
    assert caught.value.reason == "bad signature"


def test_created_within_sixty_seconds_either_way_is_accepted() -> None:
    now = time.time()
    for offset in (-60, 60):
        headers, _ = Signer(SECRET).sign_request("POST", "/heartbeat", BODY, now=now + offset)
        verify(Message("POST", "http://r/heartbeat", headers), now=now)


def test_answers_are_signed_over_status_and_digest_with_the_request_nonce() -> None:
    signer = Signer(SECRET)
    now = time.time()
    headers = signer.sign_response(200, b'{"ok":true}', nonce="n-1", now=now)
    assert '"@status" "content-digest"' in headers["Signature-Input"]
    signer.verify_response(200, headers.items(), b'{"ok":true}', nonce="n-1", now=now)
    # The package's verifier agrees.
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.HMAC_SHA256, key_resolver=Keys())
    (result,) = verifier.verify(Answer(200, headers), body=b'{"ok":true}')
    assert result.nonce == "n-1"
    for status, body, nonce in [
        (404, b'{"ok":true}', "n-1"),
        (200, b"{}", "n-1"),
        (200, b'{"ok":true}', "n-2"),
    ]:
        with pytest.raises(AuthError):
            signer.verify_response(status, headers.items(), body, nonce=nonce, now=now)


def test_a_too_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 8"):
        Signer("short")


def test_our_signing_writes_exactly_what_the_library_would() -> None:
    from http_message_signatures import HTTPMessageSigner, algorithms

    from p2pcommon.signing.messages import RequestMessage, SecretResolver
    from p2pcommon.signing.signer import REQUEST_COMPONENTS

    ours, _ = Signer(SECRET).sign_request("POST", "/heartbeat", b'{"id":"x"}', now=1e9, nonce="n")
    theirs: dict[str, str] = {}
    library = HTTPMessageSigner(
        signature_algorithm=algorithms.HMAC_SHA256, key_resolver=SecretResolver(SECRET.encode())
    )
    library.sign(
        RequestMessage(method="POST", url="http://registry/heartbeat", headers=theirs),
        key_id="p2p",
        created=datetime.datetime.fromtimestamp(1e9, tz=datetime.UTC),
        nonce="n",
        label="sig",
        covered_component_ids=REQUEST_COMPONENTS,
        body=b'{"id":"x"}',
    )
    assert ours == theirs


# -- extra covered components (RFC 9421 §2.2), derived from the request as received --

WITH_AUTHORITY = ("@method", "@path", "content-digest", "@authority")


def signed_for(
    url: str,
    components: tuple[str, ...] = WITH_AUTHORITY,
    *,
    method: str = "POST",
    body: bytes = BODY,
    nonce: str = "n-extra",
) -> Message:
    """A request to ``url`` signed by the package itself, as a standard client would."""
    message = Message(method, url)
    signer = HTTPMessageSigner(signature_algorithm=algorithms.HMAC_SHA256, key_resolver=Keys())
    signer.sign(
        message,
        key_id="p2p",
        nonce=nonce,
        label="sig",
        created=datetime.datetime.fromtimestamp(time.time(), tz=datetime.UTC),
        covered_component_ids=components,
        body=body,
    )
    return message


def verify_as_received(
    message: Message, host: str | None, target: str = "/heartbeat", scheme: str = "http"
) -> signing.Verified:
    """What the registry does with the request: the Host header is the client's, as sent."""
    fields = list(message.headers.items())
    if host is not None:
        fields.append(("host", host))
    return Signer(SECRET).verify_request(
        message.method, target, fields, BODY, now=time.time(), scheme=scheme
    )


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://registry.example:7000/heartbeat", "registry.example:7000"),
        # Lowercased, and the scheme's default port omitted, on both sides (§2.2.3).
        ("http://registry.example:7000/heartbeat", "Registry.EXAMPLE:7000"),
        ("http://registry.example/heartbeat", "registry.example:80"),
        ("http://192.0.2.7:7000/heartbeat", "192.0.2.7:7000"),
        ("http://[2001:db8::7]:7000/heartbeat", "[2001:db8::7]:7000"),
    ],
    ids=["name", "case", "default-port", "ipv4", "ipv6"],
)
def test_a_signature_also_covering_authority_is_accepted_with_the_right_host(
    url: str, host: str
) -> None:
    assert verify_as_received(signed_for(url), host).nonce == "n-extra"


@pytest.mark.parametrize(
    "host",
    [
        "other.example:7000",
        "registry.example:7001",
        "registry.example",
        "evil@registry.example:7000",
        "registry.example:7000, registry.example:7000",
        "[not-an-address]:7000",
        None,
    ],
    ids=["other-name", "other-port", "no-port", "userinfo", "two-hosts", "bad-literal", "none"],
)
def test_a_signature_covering_authority_is_refused_with_another_host(host: str | None) -> None:
    message = signed_for("http://registry.example:7000/heartbeat")
    with pytest.raises(AuthError) as caught:
        verify_as_received(message, host)
    assert caught.value.reason == "bad signature"


def test_without_a_host_header_the_required_components_still_verify() -> None:
    message = signed_for("http://anything.example/heartbeat", signing.REQUEST_COMPONENTS)
    assert verify_as_received(message, None).nonce == "n-extra"


TARGET = "/heartbeat?a=1&b=two"
HOST = "registry.example:8443"
#: (scheme, Host, target) of requests that differ from the signed one in one respect.
OTHER_SCHEME = ("http", HOST, TARGET)
OTHER_HOST = ("https", "other.example:8443", TARGET)
OTHER_QUERY = ("https", HOST, "/heartbeat?a=2&b=two")


@pytest.mark.parametrize(
    ("extra", "refused"),
    [
        (("@scheme",), [OTHER_SCHEME]),
        (("@target-uri",), [OTHER_SCHEME, OTHER_HOST, OTHER_QUERY]),
        (("@request-target",), [OTHER_QUERY]),
        (("@query",), [OTHER_QUERY]),
        (('"@query-param";name="a"',), [OTHER_QUERY]),
        (
            ("@authority", "@scheme", "@target-uri", "@request-target", "@query"),
            [OTHER_SCHEME, OTHER_HOST, OTHER_QUERY],
        ),
    ],
    ids=["scheme", "target-uri", "request-target", "query", "query-param", "all"],
)
def test_the_other_derived_components_are_derived_from_the_request(
    extra: tuple[str, ...], refused: list[tuple[str, str, str]]
) -> None:
    message = signed_for(f"https://{HOST}{TARGET}", ("@method", "@path", "content-digest", *extra))
    verify_as_received(message, HOST, target=TARGET, scheme="https")
    for scheme, host, target in refused:
        with pytest.raises(AuthError) as caught:
            verify_as_received(message, host, target=target, scheme=scheme)
        assert caught.value.reason == "bad signature"


async def test_the_registry_derives_authority_from_the_host_header_it_received() -> None:
    from p2pcommon.http.events import Request
    from registryd.app import RegistryApp
    from registryd.metrics import RegistryMetrics
    from registryd.store import MemoryStore

    app = RegistryApp(Signer(SECRET), MemoryStore(), RegistryMetrics())

    def request(host: str) -> Request:
        message = signed_for(
            "http://registry.example:7000/clients", method="GET", body=b"", nonce=f"n-{host}"
        )
        fields = [(k.lower().encode(), v.encode()) for k, v in message.headers.items()]
        return Request("GET", "/clients", [(b"host", host.encode()), *fields], b"", "192.0.2.9")

    accepted = await app.handle(request("registry.example:7000"))
    assert accepted.status == 200, accepted.body
    refused = await app.handle(request("elsewhere.example:7000"))
    assert refused.status == 401
    assert json.loads(refused.body)["error"] == "bad signature"


async def test_the_registry_verifies_a_query_against_the_target_it_received() -> None:
    from p2pcommon.http.events import Request
    from registryd.app import RegistryApp
    from registryd.metrics import RegistryMetrics
    from registryd.store import MemoryStore

    app = RegistryApp(Signer(SECRET), MemoryStore(), RegistryMetrics())
    components = ("@method", "@path", "@query", "content-digest")

    def request(received_target: str, nonce: str) -> Request:
        message = signed_for(
            "http://registry.example/clients?since=3",
            components,
            method="GET",
            body=b"",
            nonce=nonce,
        )
        fields = [(k.lower().encode(), v.encode()) for k, v in message.headers.items()]
        host = [(b"host", b"registry.example")]
        return Request("GET", received_target, [*host, *fields], b"", "192.0.2.9")

    accepted = await app.handle(request("/clients?since=3", "n-q1"))
    assert accepted.status == 200, accepted.body
    refused = await app.handle(request("/clients?since=0", "n-q2"))
    assert refused.status == 401
