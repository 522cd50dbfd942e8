"""Our messages as the http-message-signatures package sees them (docs/protocol.md §2).

The package reads a request or an answer through a few attributes (method,
URL, headers; status) and resolves covered components and keys through
classes of its own.  These are ours: header views in wire order, the request
with the authority it really named, the secret as the only key, and a
component resolver that refuses what cannot be derived and remembers why,
for the refusal's message.  The package itself is imported on first use.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from p2pcommon.signing.shape import KEY_ID

if TYPE_CHECKING:
    from http_message_signatures import HTTPMessageVerifier, HTTPSignatureKeyResolver
else:
    # The package is imported on first need (below); its resolver base only declares.
    HTTPSignatureKeyResolver = object


class HeaderView:
    """Read-only header view in wire order, as the library's resolvers expect."""

    def __init__(self, fields: Iterable[tuple[str, str]]) -> None:
        self._fields = list(fields)

    def items(self) -> Iterator[tuple[str, str]]:
        return iter(self._fields)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name for name, _ in self._fields))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(n.lower() == name.lower() for n, _ in self._fields)

    def get(self, name: str) -> str | None:
        values = [v for n, v in self._fields if n.lower() == name]
        return ", ".join(values) if values else None


@dataclass
class RequestMessage:
    method: str
    url: str
    headers: Any
    #: False when the request named no usable authority (no or a malformed
    #: ``Host``): then ``url`` holds a placeholder host that must never be signed.
    has_authority: bool = True
    #: The covered component the package could not derive, and why (for the refusal).
    unresolved: tuple[str, str] | None = None


#: RFC 9110 §7.2 ``Host = uri-host [ ":" port ]``: a reg-name, an IPv4 address or
#: a bracketed IP literal.  Userinfo ("@") and anything after the port are refused,
#: so that the URL built from it has exactly this authority.
_HOST = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]*)?")
#: Stands in for the host of a request without a usable ``Host``; never in a signature base.
NO_AUTHORITY = "no-authority.invalid"


def request_authority(host_header: str | None) -> str | None:
    """The request's authority as sent in ``Host``, or None if it names none usable."""
    if host_header is None:
        return None
    match = _HOST.fullmatch(host_header.strip())
    if match is None:
        return None
    host = match["host"]
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
    return match.group(0)


@dataclass
class ResponseMessage:
    status_code: int
    headers: Any
    request: None = None
    unresolved: tuple[str, str] | None = None


class SecretResolver(HTTPSignatureKeyResolver):
    def __init__(self, key: bytes) -> None:
        self._key = key

    def resolve_private_key(self, key_id: str) -> bytes:
        return self._key

    def resolve_public_key(self, key_id: str) -> bytes | None:
        return self._key if key_id == KEY_ID else None


@cache
def package_classes() -> tuple[type[Any], type[HTTPMessageVerifier]]:
    """The resolver and verifier classes built on the package, made on first use.

    The package (with the cryptography it imports, ~9 MiB of a daemon's
    memory) is needed only for messages not in our exact shape and for
    refusals: a peer talking to a p2p registry never loads it.
    """
    from http_message_signatures import (
        HTTPMessageSignaturesException,
        HTTPMessageVerifier,
        HTTPSignatureComponentResolver,
    )

    class Components(HTTPSignatureComponentResolver):
        """The package's resolver, refusing the components that need an authority we lack.

        The package lowercases the host and omits the scheme's default port itself
        (RFC 9421 §2.2.3), from the URL that ``verify_request`` builds from ``Host``.
        """

        def _need_authority(self, component: str) -> None:
            if not getattr(self.message, "has_authority", True):
                raise HTTPMessageSignaturesException(
                    f"{component} covered, but the request has no usable Host header"
                )

        def resolve(self, component_node: Any) -> Any:
            try:
                return super().resolve(component_node)
            except HTTPMessageSignaturesException as exc:
                # Kept on our message: the package's verdict wraps this exception,
                # and the refusal names the component (docs/protocol.md §2.3).
                self.message.unresolved = (str(component_node), str(exc))
                raise

        def get_authority(self) -> str:
            self._need_authority("@authority")
            value: str = super().get_authority()  # type: ignore[no-untyped-call]
            return value

        def get_target_uri(self) -> str:
            self._need_authority("@target-uri")
            value: str = super().get_target_uri()  # type: ignore[no-untyped-call]
            return value

    class Verifier(HTTPMessageVerifier):
        # The library's own clock checks are disabled: Signer checks ``created``
        # against the caller's ``now`` after the MAC verified, so "stale" is only
        # ever reported for authentic messages.
        max_clock_skew = datetime.timedelta(days=365 * 100)

    return Components, Verifier


def parse_signature_field(value: str) -> Any:
    """One signature field, read by the package's own parser as its verify() reads it."""
    from http_message_signatures import HTTPMessageVerifier

    return HTTPMessageVerifier._parse_signature_dictionary(value)


def as_str_fields(headers: Iterable[tuple[str | bytes, str | bytes]]) -> list[tuple[str, str]]:
    return [
        (
            n.decode("ascii") if isinstance(n, bytes) else n,
            v.decode("latin-1") if isinstance(v, bytes) else v,
        )
        for n, v in headers
    ]
