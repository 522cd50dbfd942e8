"""The exact-shape path and the http-message-signatures package agree, message by message.

``Signer`` verifies the shape it writes without the package and leaves
everything else to it.  On a corpus of good, odd and forged messages the
verdict (accepted with which nonce and created, or refused with which reason)
must be the package's every time, and what the fast path writes must be byte
for byte what the package writes.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest
from http_message_signatures import HTTPMessageSigner, algorithms

from p2pcommon.signing.messages import RequestMessage, ResponseMessage, SecretResolver
from p2pcommon.signing.shape import ExactShape
from p2pcommon.signing.signer import AuthError, Signer, Verified

SECRET = "network-secret-for-tests"
KEY = SECRET.encode()
NOW = 1_800_000_000.4
BODY = b'{"id":"mbxq3ilfb5ulgp7izuhomtd2lkydb4hvc2oatvdnzfi5shvw5bqa"}'

Fields = list[tuple[bytes, bytes]]


@dataclass
class Case:
    method: str
    target: str
    fields: Fields
    body: bytes = BODY
    scheme: str = "http"
    now: float = NOW


def package_headers(
    method: str,
    path: str,
    body: bytes,
    *,
    nonce: str | None = "n-1",
    created: float = NOW,
    components: tuple[str, ...] = ("@method", "@path", "content-digest"),
    label: str = "sig",
    key_id: str = "p2p",
    secret: str = SECRET,
    digest: str | None = None,
) -> dict[str, str]:
    """A request signed by the package itself, as any standard client would sign it."""
    headers: dict[str, str] = {} if digest is None else {"Content-Digest": digest}
    HTTPMessageSigner(
        signature_algorithm=algorithms.HMAC_SHA256,
        key_resolver=SecretResolver(secret.encode()),
    ).sign(
        RequestMessage(method=method, url=f"http://registry.example:7000{path}", headers=headers),
        key_id=key_id,
        created=datetime.datetime.fromtimestamp(created, tz=datetime.UTC),
        nonce=nonce,
        label=label,
        covered_component_ids=components,
        body=body,
        use_existing_digest=digest is not None,
    )
    return headers


def as_fields(headers: dict[str, str], host: str | None = "registry.example:7000") -> Fields:
    """What h11 hands the server: lowercase names, bytes, Host first."""
    fields = [] if host is None else [(b"host", host.encode())]
    fields.append((b"content-type", b"application/json"))
    return fields + [(name.lower().encode(), value.encode()) for name, value in headers.items()]


def ours(
    method: str = "POST",
    target: str = "/heartbeat",
    body: bytes = BODY,
    host: str | None = "registry.example:7000",
) -> Case:
    headers, _ = Signer(SECRET).sign_request(method, target, body, now=NOW, nonce="n-1")
    return Case(method, target, as_fields(headers, host), body)


def edited(case: Case, name: bytes, edit: Callable[[bytes], bytes | None]) -> Case:
    """``case`` with the value of field ``name`` edited (None: removed)."""
    fields: Fields = []
    for field_name, value in case.fields:
        if field_name == name:
            new = edit(value)
            if new is None:
                continue
            value = new
        fields.append((field_name, value))
    return replace(case, fields=fields)


def doubled(case: Case, name: bytes) -> Case:
    return replace(case, fields=case.fields + [f for f in case.fields if f[0] == name])


def flip_last_bits(b64: bytes) -> bytes:
    """Same bytes, another spelling: the unused low bits of the last base64 digit set."""
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(b64[-2:-1])
    return b64[:-2] + alphabet[last | 0b11 : (last | 0b11) + 1] + b64[-1:]


def other_spelling(value: bytes) -> bytes:
    """``sig=:…:`` / ``sha-256=:…:`` with a non-canonical base64 of the same bytes."""
    head, _, rest = value.partition(b":")
    return head + b":" + flip_last_bits(rest[:-1]) + b":"


def package(
    method: str, target: str, body: bytes = BODY, host: str | None = None, **kw: object
) -> Case:
    fields = as_fields(package_headers(method, target, body, **kw))  # type: ignore[arg-type]
    if host is not None:
        fields = [(b"host", host.encode()), *fields[1:]]
    return Case(method, target, fields, body)


def sha512_digest(body: bytes) -> str:
    return f"sha-512=:{base64.b64encode(hashlib.sha512(body).digest()).decode()}:"


def both_digests(body: bytes) -> str:
    sha256 = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return f"sha-256=:{sha256}:, {sha512_digest(body)}"


GOOD = ours()
SIG_INPUT, SIGNATURE, DIGEST = b"signature-input", b"signature", b"content-digest"

#: name -> request; the first ones are in our exact shape and must take the fast path.
FAST_CASES: dict[str, Case] = {
    "heartbeat": GOOD,
    "empty-body": ours("GET", "/clients", b""),
    "query": ours("GET", "/clients?since=42&x=a:b", b""),
    "no-host": ours(host=None),
    "ipv6-host": ours(host="[2001:db8::7]:7000"),
    "https": replace(GOOD, scheme="https"),
    "package-signed": package("POST", "/heartbeat"),
    "plain-odd-nonce": package("POST", "/heartbeat", nonce="a b!#$%&'()*+,-./:;<=>?@[]^_`{|}~"),
    "created-60s-ago": replace(GOOD, now=NOW + 60),
    "created-60s-ahead": replace(GOOD, now=NOW - 60),
    "signature-other-spelling": edited(GOOD, SIGNATURE, other_spelling),
}
OTHER_CASES: dict[str, Case] = {
    # Accepted, by the package.
    "nonce-needs-escaping": package("POST", "/heartbeat", nonce='say "hi" \\o/'),
    "authority-covered": package(
        "POST", "/heartbeat", components=("@method", "@path", "content-digest", "@authority")
    ),
    "sha-512-digest": package("POST", "/heartbeat", digest=sha512_digest(BODY)),
    "two-digests": package("POST", "/heartbeat", digest=both_digests(BODY)),
    "params-reordered": edited(
        GOOD,
        SIG_INPUT,
        lambda v: v.replace(b';keyid="p2p";alg="hmac-sha256"', b';alg="hmac-sha256";keyid="p2p"'),
    ),
    "spaces-in-inner-list": edited(GOOD, SIG_INPUT, lambda v: v.replace(b"(", b"( ")),
    # The same digest, spelled otherwise: not what the signature covers.
    "digest-other-spelling": edited(GOOD, DIGEST, other_spelling),
    # Refused, each for the package's reason.
    "no-signature": edited(edited(GOOD, SIG_INPUT, lambda v: None), SIGNATURE, lambda v: None),
    "no-signature-input": edited(GOOD, SIG_INPUT, lambda v: None),
    "no-signature-field": edited(GOOD, SIGNATURE, lambda v: None),
    "body-changed": replace(GOOD, body=BODY.replace(b"m", b"n", 1)),
    "no-digest": edited(GOOD, DIGEST, lambda v: None),
    "digest-twice": doubled(GOOD, DIGEST),
    "signature-input-twice": doubled(GOOD, SIG_INPUT),
    "signature-twice": doubled(GOOD, SIGNATURE),
    "created-changed": edited(GOOD, SIG_INPUT, lambda v: v.replace(b"created=18", b"created=17")),
    "created-leading-zero": edited(GOOD, SIG_INPUT, lambda v: v.replace(b"created=", b"created=0")),
    "nonce-changed": edited(GOOD, SIG_INPUT, lambda v: v.replace(b'nonce="n-1"', b'nonce="n-2"')),
    "keyid-changed": package("POST", "/heartbeat", key_id="someone"),
    "label-changed": package("POST", "/heartbeat", label="other"),
    "components-reordered": package(
        "POST", "/heartbeat", components=("@path", "@method", "content-digest")
    ),
    "path-not-covered": package("POST", "/heartbeat", components=("@method", "content-digest")),
    "no-nonce": package("POST", "/heartbeat", nonce=None),
    "empty-nonce": package("POST", "/heartbeat", nonce=""),
    "nonce-too-long": package("POST", "/heartbeat", nonce="n" * 65),
    "expires-added": edited(GOOD, SIG_INPUT, lambda v: v + b";expires=1900000000"),
    "stale": replace(GOOD, now=NOW + 62),
    "from-the-future": replace(GOOD, now=NOW - 61),
    "year-2200": package("POST", "/heartbeat", created=7_258_118_400),
    "signature-flipped": edited(GOOD, SIGNATURE, lambda v: v[:6] + bytes([v[6] ^ 1]) + v[7:]),
    "signature-short": edited(GOOD, SIGNATURE, lambda v: v[:-6] + b"=:"),
    "second-signature": edited(GOOD, SIG_INPUT, lambda v: v + b", " + v.replace(b"sig=", b"sig2=")),
    "wrong-secret": package("POST", "/heartbeat", secret="another-secret-entirely"),
    "lowercase-method": replace(GOOD, method="post"),
    "other-method": replace(GOOD, method="PUT"),
    "other-path": replace(GOOD, target="/leave"),
    "escaped-path": replace(GOOD, target="/heart%62eat"),
    "malformed-escape-in-host": package("POST", "/heartbeat", host="registry%zz:7000"),
    "two-hosts": doubled(GOOD, b"host"),
}


def verdict(verify: Callable[[], Verified]) -> tuple[str, ...]:
    try:
        verified = verify()
    except AuthError as exc:
        return ("refused", exc.reason)
    return ("accepted", verified.nonce, str(verified.created))


def by_package(case: Case) -> tuple[str, ...]:
    signer = Signer(SECRET)
    return verdict(
        lambda: signer._library_verify_request(
            case.method, case.target, case.fields, case.body, now=case.now, scheme=case.scheme
        )
    )


def by_signer(case: Case) -> tuple[str, ...]:
    return verdict(
        lambda: Signer(SECRET).verify_request(
            case.method, case.target, case.fields, case.body, now=case.now, scheme=case.scheme
        )
    )


def exact(case: Case) -> tuple[str, int] | None:
    return ExactShape(KEY).verify_request(
        case.method, case.target, case.fields, case.body, now=case.now, scheme=case.scheme
    )


@pytest.mark.parametrize("name", list(FAST_CASES))
def test_our_shape_is_accepted_without_the_package_as_the_package_accepts_it(name: str) -> None:
    case = FAST_CASES[name]
    expected = by_package(case)
    assert expected[0] == "accepted"
    assert exact(case) is not None, "not in the exact shape"
    assert by_signer(case) == expected


@pytest.mark.parametrize("name", list(OTHER_CASES))
def test_every_other_message_gets_the_packages_verdict(name: str) -> None:
    case = OTHER_CASES[name]
    expected = by_package(case)
    assert by_signer(case) == expected
    # Whatever the fast path accepts, the package accepts alike.
    accepted = exact(case)
    if accepted is not None:
        assert expected == ("accepted", accepted[0], str(accepted[1]))


def test_the_corpus_has_refusals_of_every_reason() -> None:
    reasons = {by_package(case)[-1] for case in OTHER_CASES.values()}
    assert {"missing signature", "bad signature", "stale", "digest mismatch"} <= reasons


# -- answers --------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def signed_answer(status: int = 200, body: bytes = b'{"ttl":90}', nonce: str = "n-1") -> Answer:
    return Answer(status, body, Signer(SECRET).sign_response(status, body, nonce=nonce, now=NOW))


@pytest.mark.parametrize(
    ("answer", "fast"),
    [
        (signed_answer(), True),
        (signed_answer(404, b'{"error":"unknown member"}'), True),
        (signed_answer(nonce='with "quotes"'), False),
        (replace(signed_answer(), status=201), False),
        (replace(signed_answer(), body=b'{"ttl":91}'), False),
        (Answer(200, b"{}", {"Content-Type": "application/json"}), False),
    ],
    ids=["ok", "error", "escaped-nonce", "status-changed", "body-changed", "unsigned"],
)
def test_answers_get_the_packages_verdict(answer: Answer, fast: bool) -> None:
    signer = Signer(SECRET)
    fields = list(answer.headers.items())
    expected = verdict(
        lambda: signer._library_verify_response(answer.status, fields, answer.body, now=NOW)
    )
    accepted = ExactShape(KEY).verify_response(answer.status, fields, answer.body, now=NOW)
    assert (accepted is not None) == fast
    if accepted is not None:
        assert expected == ("accepted", accepted[0], str(accepted[1]))
    nonce = expected[1] if expected[0] == "accepted" else "n-1"
    try:
        signer.verify_response(answer.status, fields, answer.body, nonce=nonce, now=NOW)
        ours: tuple[str, ...] = ("accepted",)
    except AuthError as exc:
        ours = ("refused", exc.reason)
    assert ours == (expected[:1] if expected[0] == "accepted" else expected)


# -- writing --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "nonce", "now"),
    [
        ("POST", "/heartbeat", BODY, "n-1", NOW),
        ("GET", "/clients", b"", "x", 0.0),
        ("GET", "/clients?since=7", b"", "a b!#$%&'()*+,-./:;<=>?@[]^_`{|}~", 1e9 + 0.999),
        ("POST", "/prefix/register", b"\x00\xff" * 500, "N" * 64, 9_999_999_999.0),
    ],
)
def test_requests_we_sign_are_byte_for_byte_the_packages(
    method: str, path: str, body: bytes, nonce: str, now: float
) -> None:
    ours = ExactShape(KEY).sign_request(method, path, body, nonce=nonce, now=now)
    theirs: dict[str, str] = {}
    HTTPMessageSigner(
        signature_algorithm=algorithms.HMAC_SHA256, key_resolver=SecretResolver(KEY)
    ).sign(
        RequestMessage(method=method, url=f"http://registry{path}", headers=theirs),
        key_id="p2p",
        created=datetime.datetime.fromtimestamp(int(now), tz=datetime.UTC),
        nonce=nonce,
        label="sig",
        covered_component_ids=("@method", "@path", "content-digest"),
        body=body,
    )
    assert ours == theirs
    assert list(ours) == list(theirs)


@pytest.mark.parametrize("status", [200, 400, 404, 503])
def test_answers_we_sign_are_byte_for_byte_the_packages(status: int) -> None:
    body = b'{"ttl":90.0,"heartbeat_interval":30.0}'
    ours = ExactShape(KEY).sign_response(status, body, nonce="n-1", now=NOW)
    theirs: dict[str, str] = {}
    HTTPMessageSigner(
        signature_algorithm=algorithms.HMAC_SHA256, key_resolver=SecretResolver(KEY)
    ).sign(
        ResponseMessage(status_code=status, headers=theirs),
        key_id="p2p",
        created=datetime.datetime.fromtimestamp(int(NOW), tz=datetime.UTC),
        nonce="n-1",
        label="sig",
        covered_component_ids=("@status", "content-digest"),
        body=body,
    )
    assert ours == theirs


def test_what_the_fast_path_cannot_write_the_package_writes() -> None:
    shape = ExactShape(KEY)
    assert shape.sign_request("post", "/heartbeat", BODY, nonce="n", now=NOW) is None
    assert shape.sign_request("POST", "/heart%62eat", BODY, nonce="n", now=NOW) is None
    assert shape.sign_response(200, BODY, nonce='"quoted"', now=NOW) is None
    assert shape.sign_response(200, BODY, nonce="n" * 65, now=NOW) is None
    headers, _ = Signer(SECRET).sign_request("POST", "/heart%62eat", BODY, now=NOW, nonce="n")
    verified = Signer(SECRET).verify_request(
        "POST", "/heart%62eat", as_fields(headers), BODY, now=NOW
    )
    assert verified.nonce == "n"
