"""TLS 1.3 with client certificates between peers (docs/protocol.md §1).

No certificate names a host (it cannot contain its own hash), so there is no
hostname check. Instead each side pins: the downloader trusts exactly the
serving member's certificate from the registry and checks that the hash of
what it was shown is the member's id; the server trusts the certificates of
the current members and checks the client's id against the member list at
every request.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable
from typing import Any, Protocol

from p2pcommon.identity import peer_id_from_der
from p2pd.identity import Identity

log = logging.getLogger("p2pd.tls")


class PeerMismatch(Exception):
    """The peer presented a valid certificate that is not the expected member's."""


def _base_context(purpose: int, identity: Identity) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(identity.cert_path, identity.key_path)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def server_context(identity: Identity, member_certs: Iterable[str]) -> ssl.SSLContext:
    """Accepts exactly the given members' certificates as client certificates.

    Each is loaded on its own: one unusable certificate from the registry
    is skipped (that member cannot connect), not fatal to everyone's.
    """
    context = _base_context(ssl.PROTOCOL_TLS_SERVER, identity)
    # Our own certificate keeps the trust store non-empty when we are alone.
    context.load_verify_locations(cadata=identity.cert_pem)
    for cert in member_certs:
        try:
            context.load_verify_locations(cadata=cert)
        except (ssl.SSLError, ValueError) as exc:
            log.warning("ignoring a member's unusable certificate: %s", exc)
    return context


def client_context(identity: Identity, member_cert: str) -> ssl.SSLContext:
    """Trusts exactly ``member_cert`` and presents our own certificate."""
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT, identity)
    context.check_hostname = False
    context.load_verify_locations(cadata=member_cert)
    return context


class PresentsCertificate(Protocol):
    def getpeercert(self, binary_form: bool = ...) -> Any: ...


def presented_id(stream: PresentsCertificate) -> str:
    der = stream.getpeercert(binary_form=True)
    if not der:
        raise PeerMismatch("the peer presented no certificate")
    return peer_id_from_der(der)


class ServerContexts:
    """One server context per member set, rebuilt only when the set changes."""

    def __init__(self, identity: Identity) -> None:
        self._identity = identity
        self._key: frozenset[str] | None = None
        self._context = server_context(identity, ())

    def current(self, member_certs: dict[str, str]) -> ssl.SSLContext:
        key = frozenset(member_certs)
        if key != self._key:
            self._context = server_context(self._identity, member_certs.values())
            self._key = key
        return self._context
