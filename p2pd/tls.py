"""TLS 1.3 with client certificates between peers (docs/protocol.md §1).

No certificate names a host (it cannot contain its own hash), so there is no
hostname check. Instead each side pins: the downloader trusts exactly the
serving member's certificate from the registry and checks that the hash of
what it was shown is the member's id; the server trusts the certificates of
the current members and checks the client's id against the member list at
every request.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Iterable
from typing import Any, Protocol

import trio

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


#: Seconds a refused client gets to take our alert and close (a lingering close).
ALERT_LINGER = 1.0
#: Bytes read (and dropped) from a refused client while waiting for its close.
ALERT_DRAIN = 64 * 1024


async def refuse_handshake(tls: trio.SSLStream[Any], linger: float = ALERT_LINGER) -> None:
    """Close a connection whose handshake failed, sending the TLS alert that says why.

    On an SSLError trio marks the stream broken and keeps what OpenSSL wrote
    meanwhile (the alert: certificate required, unknown CA, protocol version)
    in its outgoing MemoryBIO, unsent; closing then looks like a network
    fault to the client.  So the pending bytes are sent here.  The buffer is
    trio's private ``_outgoing``: if a trio release renames it, this falls
    back to the plain close.  Then a lingering close: our FIN, and the
    client's bytes (in TLS 1.3 it may already send its request) are read
    until it closes, because closing with unread input sends an RST that can
    destroy the alert before the client reads it.
    """
    transport = tls.transport_stream
    outgoing = getattr(tls, "_outgoing", None)
    pending = outgoing.read() if isinstance(outgoing, ssl.MemoryBIO) else b""
    try:
        with (
            trio.move_on_after(linger),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
        ):
            if pending:
                await transport.send_all(pending)
            if isinstance(transport, trio.abc.HalfCloseableStream):
                await transport.send_eof()
                drained = 0
                while drained < ALERT_DRAIN:
                    data = await transport.receive_some(ALERT_DRAIN)
                    if not data:
                        break
                    drained += len(data)
    finally:
        await trio.aclose_forcefully(tls)


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
