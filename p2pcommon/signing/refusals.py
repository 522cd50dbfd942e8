"""Why a message's signature is refused, naming the part that failed (docs/protocol.md §2.3).

The ``error`` of a refusal is one of five reasons and part of the API; its
``message`` (``AuthError.hint``) tells the sender what to fix.  A ``bad
signature`` has many causes, and "check the secret" is the right advice for
one of them only: so the shape of the signature (its label, covered
components and parameters) is checked here, before its MAC, and each failure
says which part it is.  Only a MAC that does not match gets the hint about
the secret.

Pure: the caller passes the field values and, for the MAC, the package's
verdict.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

from p2pcommon.signing.shape import ALGORITHM, KEY_ID, LABEL, MAX_NONCE_LENGTH, MAX_SKEW

# The reasons a request is refused with 401; the wording is part of the API.
MISSING_SIGNATURE: Final = "missing signature"
BAD_SIGNATURE: Final = "bad signature"
STALE: Final = "stale"
REPLAYED: Final = "replayed"
DIGEST_MISMATCH: Final = "digest mismatch"

#: In the order docs/protocol.md §2.1 gives them.
REQUIRED_PARAMETERS: Final = ("created", "keyid", "alg", "nonce")
#: Parameters the package understands besides those; p2p uses neither.
_TOLERATED_PARAMETERS: Final = frozenset({"expires", "tag"})
_ALL_PARAMETERS: Final = "created, keyid, alg and nonce"
_SECTION: Final = "(docs/protocol.md §2.1)"

#: What to do about the one part that cannot be seen from outside: the MAC.
MAC_HINT: Final = (
    "the signature's MAC does not match the request as the registry received it: check that "
    "this peer's secret is the same as the registry's, or a covered component such as "
    '"@authority" differs from what the registry saw (a proxy that rewrites Host or the path)'
)

_HINTS: Final = {
    MISSING_SIGNATURE: "sign the request with the network's shared secret (docs/protocol.md §2)",
    BAD_SIGNATURE: MAC_HINT,
    STALE: f"the signature's created time is more than {MAX_SKEW} s from the registry's clock: "
    "check that both clocks are synchronised (NTP)",
    REPLAYED: "this nonce was already used: every request needs a fresh nonce",
    DIGEST_MISMATCH: "Content-Digest is missing or does not match the body",
}


class AuthError(Exception):
    """A message failed authentication; ``reason`` is one of the five reasons above,
    ``hint`` what its sender should do (the ``message`` of the 401)."""

    def __init__(self, reason: str, detail: str = "", *, hint: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.hint = hint or _HINTS.get(reason, "")


def bad_signature(detail: str, hint: str | None = None) -> AuthError:
    """A ``bad signature`` whose message says which part failed (``detail`` if no hint)."""
    return AuthError(BAD_SIGNATURE, detail, hint=hint or f"{detail} {_SECTION}")


def check_shape(
    signature_input: str | None,
    signature: str | None,
    required: Sequence[str],
    *,
    request: bool,
    parse: Any,
) -> None:
    """Raise the AuthError that names the first part of a signature breaking §2.1.

    ``parse`` reads one signature field into a mapping of label to member,
    a covered-component list with ``params`` (the package's own parser, so
    that both read the fields alike).  Checked before the MAC: a wrong
    label, a missing component or parameter, a foreign keyid or alg and a bad
    nonce are each named, whatever the secret.
    """
    if signature_input is None or signature is None:
        missing = "Signature-Input" if signature_input is None else "Signature"
        raise bad_signature(f"the request has no {missing} field; send both signature fields")
    try:
        inputs, signatures = parse(signature_input), parse(signature)
    except Exception as exc:
        raise bad_signature(
            f"Signature-Input or Signature is not a Structured Field dictionary (RFC 8941): {exc}"
        ) from None
    labels = list(inputs)
    if len(labels) != 1 or list(signatures) != labels:
        raise bad_signature(
            f"send exactly one signature, labelled {LABEL!r} in both Signature-Input and "
            f"Signature (Signature-Input has {_labels(labels)}, Signature {_labels(signatures)})"
        )
    (label,) = labels
    if label != LABEL:
        raise bad_signature(f"the signature is labelled {label!r}: label it {LABEL!r}")
    covered: Any = inputs[label]
    if not isinstance(covered, Sequence) or isinstance(covered, (str, bytes)):
        raise bad_signature(f"Signature-Input {LABEL!r} must be a list of covered components")
    _check_components([str(item) for item in covered], required, request=request)
    _check_parameters(dict(getattr(covered, "params", {})))


def _labels(labels: Iterable[str]) -> str:
    return ", ".join(map(repr, labels)) or "none"


def _check_components(covered: list[str], required: Sequence[str], *, request: bool) -> None:
    everything = " ".join(f'"{name}"' for name in required)
    for name in required:
        if f'"{name}"' not in covered:
            raise bad_signature(
                f'the signature does not cover the component "{name}": cover ({everything}), '
                "maybe more"
            )
    if request and '"@status"' in covered:
        raise bad_signature('"@status" belongs to answers: do not cover it in a request')


def _check_parameters(params: dict[str, object]) -> None:
    for name in REQUIRED_PARAMETERS:
        if name not in params:
            raise bad_signature(
                f"the signature lacks the parameter {name!r}: give all of {_ALL_PARAMETERS}"
            )
    for name in params:
        if name not in REQUIRED_PARAMETERS and name not in _TOLERATED_PARAMETERS:
            raise bad_signature(
                f"the signature has the parameter {name!r}, which p2p does not use: give only "
                f"{_ALL_PARAMETERS}"
            )
    created, keyid, alg, nonce = (params[name] for name in REQUIRED_PARAMETERS)
    if type(created) is not int:
        raise bad_signature("the parameter 'created' must be an integer (whole Unix seconds)")
    if keyid != KEY_ID or alg != ALGORITHM:
        raise bad_signature(
            f"the signature has keyid {keyid!r} and alg {alg!r}: they must be keyid={KEY_ID!r} "
            f"and alg={ALGORITHM!r} (the key is the shared secret's UTF-8 bytes)"
        )
    if not isinstance(nonce, str) or not 0 < len(nonce) <= MAX_NONCE_LENGTH:
        size = f"{len(nonce)} characters" if isinstance(nonce, str) else "no string"
        raise bad_signature(
            f"the nonce must be a string of 1-{MAX_NONCE_LENGTH} characters, fresh for every "
            f"request (it has {size})"
        )


def package_refusal(
    exc: Exception, unresolved: tuple[str, str] | None, mac_failed: bool
) -> AuthError:
    """The AuthError for a signature of the right shape that the package refused.

    ``unresolved`` is the covered component the package could not derive from
    the message, and why; ``mac_failed`` whether the MAC itself did not match.
    """
    if unresolved is not None:
        component, why = unresolved
        return bad_signature(
            f"the signature covers {component}, which cannot be derived from this message "
            f"({why}): send what it needs or do not cover it"
        )
    if mac_failed:
        return AuthError(BAD_SIGNATURE, "the MAC does not match", hint=MAC_HINT)
    return bad_signature(f"the signature is malformed: {exc}")
