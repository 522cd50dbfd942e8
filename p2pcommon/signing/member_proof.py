"""The register's proof that the sender holds the member's key (docs/protocol.md §2.4).

``POST /register`` carries, beside the network's ``sig`` signature, a second
RFC 9421 signature labelled ``member``: made with the member's identity key
(``alg="ecdsa-p256-sha256"``, raw r‖s as RFC 9421 §3.3.4 says; or
``alg="ed25519"``), ``keyid`` the member id, over the same components as
``sig`` with the same ``created`` and ``nonce``.  It is verified with the
public key of the certificate in the body, whose hash is the id, so the proof
is bound to this very body and this request's nonce: it cannot be lifted into
another request.  Knowing a member's certificate is therefore not enough to
change its record.

Building and reading the fields is pure and light (the daemon does it);
``sign_base`` and ``check_member_signature`` import cryptography when called:
p2pd signs in a short child process (``p2pd.membership.keysign``), the registry
verifies in its own.
"""

from __future__ import annotations

import base64
import re
from collections import UserList
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from p2pcommon.signing.shape import REQUEST_COMPONENTS

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

MEMBER_LABEL: Final = "member"
ECDSA_P256: Final = "ecdsa-p256-sha256"
ED25519: Final = "ed25519"
#: The refusal's ``error`` (401) when the proof is absent or does not hold.
BAD_MEMBER_SIGNATURE: Final = "bad member signature"
#: Both algorithms give 64 bytes: r‖s of 32 bytes each, or an Ed25519 signature.
SIGNATURE_BYTES: Final = 64
_PARAMETERS: Final = frozenset({"created", "keyid", "alg", "nonce"})
_CREATED = re.compile(r";created=([0-9]+)(?:;|$)")

Fields = Sequence[tuple[bytes, bytes]]
#: Signs a signature base with the member's identity key: the raw 64 bytes.
#: p2pd's runs a short child process (p2pd.membership.keysign).
MemberProver = Callable[[bytes], Awaitable[bytes]]


class MemberProofError(Exception):
    """The member signature is absent or does not prove the key; the message says what."""


# -- the sender's side --------------------------------------------------------


def member_params(member_id: str, created: int, nonce: str) -> str:
    """The ``member`` signature's parameters, as they go in Signature-Input after ``member=``."""
    covered = " ".join(f'"{component}"' for component in REQUEST_COMPONENTS)
    return f'({covered});created={created};keyid="{member_id}";alg="{ECDSA_P256}";nonce="{nonce}"'


def signature_base(
    method: str,
    path: str,
    digest: str,
    params: str,
    components: Sequence[str] = REQUEST_COMPONENTS,
) -> bytes:
    """The RFC 9421 §2.5 signature base over ``components`` (no final newline)."""
    values = {"@method": method, "@path": path, "content-digest": digest}
    lines = [f'"{component}": {values[component]}' for component in components]
    lines.append(f'"@signature-params": {params}')
    return "\n".join(lines).encode("ascii")


def created_of(sig_input: str) -> int:
    """The ``created`` of the one ``sig`` signature we wrote ourselves."""
    found = _CREATED.search(sig_input)
    if found is None:
        raise ValueError(f"no created parameter in {sig_input!r}")
    return int(found[1])


def add_member_signature(headers: dict[str, str], params: str, signature: bytes) -> None:
    """Append the ``member`` signature to the ``sig`` one in both fields (RFC 9421 §4.3)."""
    value = base64.b64encode(signature).decode("ascii")
    headers["Signature-Input"] += f", {MEMBER_LABEL}={params}"
    headers["Signature"] += f", {MEMBER_LABEL}=:{value}:"


def sign_base(key: PrivateKeyTypes, base: bytes) -> bytes:
    """The 64-byte signature of ``base`` by an identity key (imports cryptography).

    ECDSA is signed deterministically (RFC 6979): no random number can leak the
    key, and the documentation's worked example is reproducible.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(base)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError("the identity key is neither ECDSA P-256 nor Ed25519")
    der = key.sign(base, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@dataclass(frozen=True)
class RegisterProof:
    """The member's key at work: adds the ``member`` signature to a signed register."""

    member_id: str
    prove: MemberProver

    async def sign(self, method: str, target: str, headers: dict[str, str], nonce: str) -> None:
        """The same created and nonce as ``sig``, over the same components (§2.4)."""
        params = member_params(self.member_id, created_of(headers["Signature-Input"]), nonce)
        base = signature_base(method, target, headers["Content-Digest"], params)
        add_member_signature(headers, params, await self.prove(base))


# -- the registry's side ------------------------------------------------------


@dataclass(frozen=True)
class MemberSignature:
    """The ``member`` entries of a request's Signature-Input and Signature."""

    #: The covered components and their parameters; None if Signature-Input lacks it.
    components: tuple[tuple[str, dict[str, Any]], ...] | None
    parameters: dict[str, Any]
    #: Its ``@signature-params`` value: the serialized inner list.
    params: str
    #: The signature's bytes; None if Signature lacks it or it is no Byte Sequence.
    signature: bytes | None


def split_member_signature(
    headers: Fields,
) -> tuple[list[tuple[bytes, bytes]], MemberSignature | None]:
    """``headers`` without the ``member`` signature, and that signature (None if absent).

    The remaining ``sig`` signature is verified as on any route, so that it
    stays exactly what docs/protocol.md §2.1 says.  Fields that do not parse
    are left as they are: the ``sig`` check then says what is wrong with them.
    The fields are read and written by the http-message-signatures package's
    own parser, as its verifier reads them.
    """
    from http_message_signatures import HTTPMessageSignaturesException

    from p2pcommon.signing.messages import parse_signature_field

    parsed: dict[bytes, Any] = {}
    for name in (b"signature-input", b"signature"):
        values = [value for field, value in headers if field.lower() == name]
        if not values:
            continue
        try:
            parsed[name] = parse_signature_field(b", ".join(values).decode("latin-1"))
        except (ValueError, HTTPMessageSignaturesException):  # malformed, a label twice
            return list(headers), None
    inputs = parsed.get(b"signature-input", {})
    signatures = parsed.get(b"signature", {})
    if MEMBER_LABEL not in inputs and MEMBER_LABEL not in signatures:
        return list(headers), None
    member_input = inputs.pop(MEMBER_LABEL, None)
    member_signature = signatures.pop(MEMBER_LABEL, None)
    kept = [(field, value) for field, value in headers if field.lower() not in parsed]
    for name, rest in parsed.items():
        if rest:
            kept.append((name, str(rest).encode("latin-1")))
    return kept, _member(member_input, member_signature)


def _member(member_input: Any, member_signature: Any) -> MemberSignature:
    """The package's parsed entries (an inner list; an item) as a MemberSignature."""
    components = None
    parameters: dict[str, Any] = {}
    params = ""
    if isinstance(member_input, UserList):  # an inner list, not an item
        components = tuple((str(item.value), dict(item.params)) for item in member_input)
        parameters = dict(getattr(member_input, "params", {}))
        params = str(member_input)  # how the package writes "@signature-params"
    value = getattr(member_signature, "value", None)
    return MemberSignature(
        components, parameters, params, value if isinstance(value, bytes) else None
    )


def check_member_signature(
    member: MemberSignature | None,
    *,
    member_id: str,
    cert_pem: str,
    method: str,
    path: str,
    digest: str,
    created: int,
    nonce: str,
) -> None:
    """MemberProofError, saying what failed, unless ``member`` proves the key of ``cert_pem``."""
    if member is None:
        raise MemberProofError(
            "a register must carry a second signature labelled 'member', made with the key "
            "of the certificate in 'cert' (docs/protocol.md §2.4)"
        )
    if member.components is None or member.signature is None:
        raise MemberProofError(
            "the 'member' signature must be in both Signature-Input (an inner list) and "
            "Signature (a byte sequence)"
        )
    covered = [name for name, _ in member.components]
    if sorted(covered) != sorted(REQUEST_COMPONENTS) or any(p for _, p in member.components):
        raise MemberProofError(
            'the \'member\' signature must cover exactly ("@method" "@path" "content-digest")'
        )
    params = member.parameters
    if set(params) != _PARAMETERS:
        raise MemberProofError(
            "the 'member' signature takes exactly the parameters created, keyid, alg and nonce"
        )
    if (
        type(params["created"]) is not int
        or params["created"] != created
        or params["nonce"] != nonce
    ):
        raise MemberProofError(
            "the 'member' signature must have the same created and nonce as the 'sig' signature"
        )
    if params["keyid"] != member_id:
        raise MemberProofError("the 'member' signature's keyid must be the member id")
    if len(member.signature) != SIGNATURE_BYTES:
        raise MemberProofError(f"the 'member' signature must be {SIGNATURE_BYTES} bytes")
    base = signature_base(method, path, digest, member.params, covered)
    _verify(params["alg"], cert_pem, member.signature, base)


def _verify(alg: object, cert_pem: str, signature: bytes, base: bytes) -> None:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    key = x509.load_pem_x509_certificate(cert_pem.encode("ascii")).public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
            if alg != ECDSA_P256:
                raise MemberProofError(f'a P-256 key signs with alg="{ECDSA_P256}"')
            r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            key.verify(encode_dss_signature(r, s), base, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            if alg != ED25519:
                raise MemberProofError(f'an Ed25519 key signs with alg="{ED25519}"')
            key.verify(signature, base)
        else:
            raise MemberProofError(
                "the certificate's key cannot prove membership: only ECDSA P-256 and Ed25519 "
                "identity keys can sign the 'member' signature"
            )
    except InvalidSignature:
        raise MemberProofError(
            "the 'member' signature does not verify with the key of the certificate in "
            "'cert': sign with that certificate's key, over this request's own body"
        ) from None
