"""TLS 1.3 with client certificates between peers (docs/protocol.md §1).

No certificate names a host (it cannot contain its own hash), so there is no
hostname check. Instead each side pins: the downloader trusts exactly the
serving member's certificate from the registry and checks that the hash of
what it was shown is the member's id; the server lets the handshake through
for any certificate of the network CA (p2pd.tls.identity.NetworkCA) and
checks the client's id with the registry at every request (p2pd.peer.server).
A "foreign" member (one whose certificate that CA did not issue: a client
with its own self-signed certificate) sends its id as SNI; the server looks
it up before the handshake and uses a context that also trusts that one
certificate (``ServerContexts.for_member``).  Nothing here changes when
members join or leave.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import ssl
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

import trio

from p2pcommon.http.send import linger_close
from p2pcommon.identity import peer_id_from_der
from p2pcommon.models import Member
from p2pd.tls.identity import Identity, NetworkAnchor, NetworkCA

if TYPE_CHECKING:
    from cryptography import x509

log = logging.getLogger("p2pd.tls")


class PeerMismatch(Exception):
    """The peer presented a valid certificate that is not the expected member's."""


def _base_context(purpose: int, identity: Identity) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(identity.cert_path, identity.key_path)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def server_context(identity: Identity, anchors: Iterable[str]) -> ssl.SSLContext:
    """Accepts client certificates that chain to one of ``anchors`` (PEM each).

    Each is loaded on its own: one unusable certificate from the registry
    is skipped (that member cannot connect), not fatal to everyone's.
    """
    context = _base_context(ssl.PROTOCOL_TLS_SERVER, identity)
    # Our own certificate keeps the trust store non-empty when we are alone.
    context.load_verify_locations(cadata=identity.cert_pem)
    for cert in anchors:
        _add_anchor(context, cert)
    return context


def _add_anchor(context: ssl.SSLContext, cert: str) -> bool:
    try:
        context.load_verify_locations(cadata=cert)
    except (ssl.SSLError, ValueError) as exc:
        log.warning("ignoring a member's unusable certificate: %s", exc)
        return False
    return True


def client_context(identity: Identity, member_cert: str) -> ssl.SSLContext:
    """Trusts exactly ``member_cert`` and presents our own certificate.

    Partial-chain verification makes the pinned certificate an anchor by
    itself, also when it is not self-signed (the network CA issued it):
    OpenSSL would otherwise look for its issuer, which is not trusted here.
    """
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT, identity)
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.load_verify_locations(cadata=member_cert)
    return context


def members_client_context(
    identity: Identity, certs: Iterable[str]
) -> tuple[ssl.SSLContext, list[str]]:
    """One client context trusting each of ``certs``, and those that were unusable.

    For asking many members at once (a search): building a context per member
    costs ~0.75 ms each (our key loaded every time).  Pinning holds all the
    same because the caller checks that the presented certificate's hash is
    the member it dialled (PeerConnection.open): trusting other members' certificates
    too lets none of them pass for this one.
    """
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT, identity)
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    unusable = [cert for cert in certs if not _add_anchor(context, cert)]
    return context, unusable


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
    outgoing = getattr(tls, "_outgoing", None)
    pending = outgoing.read() if isinstance(outgoing, ssl.MemoryBIO) else b""
    try:
        with trio.move_on_after(linger):  # one deadline for the alert and the linger
            if pending:
                with contextlib.suppress(
                    trio.BrokenResourceError, trio.ClosedResourceError, OSError
                ):
                    await tls.transport_stream.send_all(pending)
            await linger_close(tls, math.inf, ALERT_DRAIN)
    finally:
        await trio.aclose_forcefully(tls)


def _name_key(name: x509.Name) -> str:
    """A name as OpenSSL matches issuers: case and runs of spaces do not count."""
    return " ".join(name.rfc4514_string().lower().split())


def _der_item(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of the value, end) of the DER item at ``at``; ValueError if cut short."""
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        size = length & 0x7F
        if not 0 < size <= 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[at : at + size], "big")
        at += size
    if at + length > len(data):
        raise ValueError("truncated DER")
    return tag, at, at + length


def issuer_and_subject(cert_der: bytes) -> tuple[bytes, bytes]:
    """The DER of a certificate's issuer and subject names (RFC 5280 §4.1); ValueError else."""
    try:
        _, tbs, _ = _der_item(cert_der, 0)  # Certificate
        _, at, _ = _der_item(cert_der, tbs)  # TBSCertificate
        items: list[bytes] = []
        while len(items) < 6:
            tag, start, end = _der_item(cert_der, at)
            if not (items == [] and tag == 0xA0):  # the optional version
                items.append(cert_der[at:end])
            at = end
    except IndexError:
        raise ValueError("truncated DER") from None
    # serialNumber, signature, issuer, validity, subject
    issuer, subject = items[2], items[4]
    if issuer[0] != 0x30 or subject[0] != 0x30:
        raise ValueError("a name is not a SEQUENCE")
    return issuer, subject


#: The subject p2pd gives its own certificates (p2pd.tls.identity.build_certificate):
#: one RDN, CN as a UTF8String "p2pd peer " and 16 hex digits.
_PEER_SUBJECT = re.compile(
    rb"\x30\x25\x31\x23\x30\x21\x06\x03\x55\x04\x03\x0c\x1ap2pd peer [0-9a-f]{16}"
)


#: Contexts kept for foreign members (the most recently used): each holds one anchor.
MAX_FOREIGN_CONTEXTS = 256


class ServerContexts:
    """The server's contexts: one default, and one per foreign member as it connects.

    The default trusts the network CA, which stands for every member it
    issued a certificate to, and our own certificate.  A foreign member (its
    certificate is not the CA's) gets a context that also trusts its own
    certificate, built in a worker thread when it first connects and kept
    (least recently used out, at most ``max_foreign``): the cost is per
    connecting foreign member, never per join or leave.  Who may fetch is
    decided per request with the registry (PeerServer.handle).
    """

    def __init__(
        self,
        identity: Identity,
        network: NetworkCA | NetworkAnchor | None = None,
        *,
        max_foreign: int = MAX_FOREIGN_CONTEXTS,
    ) -> None:
        self._identity = identity
        self._network = network
        #: The CA's subject as DER, for the common case decided without parsing (below).
        self._ca_subject: bytes | None = None
        if network is not None:
            with contextlib.suppress(ValueError):
                self._ca_subject = issuer_and_subject(ssl.PEM_cert_to_DER_cert(network.cert_pem))[1]
        self._anchors = [network.cert_pem] if network is not None else []
        self.default = server_context(identity, self._anchors)
        #: (member id, certificate) -> its context; None: the certificate is unusable.
        self._foreign: OrderedDict[tuple[str, str], ssl.SSLContext | None] = OrderedDict()
        self._max_foreign = max_foreign
        #: Contexts built so far: the default, and one per foreign member kept.
        self.builds = 1

    def current(self) -> ssl.SSLContext:
        """The default context (the network CA's members and ourselves)."""
        return self.default

    async def for_member(self, member: Member | None) -> ssl.SSLContext:
        """The context for a handshake with ``member`` (None: unknown, the default)."""
        if member is None or self._issued_by_network(member):
            return self.default
        key = (member.id, member.cert)
        if key in self._foreign:
            self._foreign.move_to_end(key)
            context = self._foreign[key]
        else:
            # Loading certificates and our key costs milliseconds: not on the loop.
            context = await trio.to_thread.run_sync(self._foreign_context, member)
            self.builds += 1
            self._foreign[key] = context
            while len(self._foreign) > self._max_foreign:
                self._foreign.popitem(last=False)
        return context or self.default

    def _foreign_context(self, member: Member) -> ssl.SSLContext | None:
        if not self._parsed_is_foreign(member):
            return None
        context = server_context(self._identity, self._anchors)
        return context if _add_anchor(context, member.cert) else None

    def _issued_by_network(self, member: Member) -> bool:
        """Whether ``member``'s certificate is, as p2pd makes them, the CA's (no anchor).

        Only the issuer's name is compared: OpenSSL checks the signature in
        the handshake, so a certificate that only claims the CA fails there.
        A certificate as p2pd makes them, naming the CA byte for byte, is
        decided from its DER; any other is parsed by cryptography in a worker
        thread (``_parsed_is_foreign``).
        """
        if self._network is None or self._ca_subject is None:
            return False
        try:
            issuer, subject = issuer_and_subject(ssl.PEM_cert_to_DER_cert(member.cert))
        except ValueError:
            return False
        return issuer == self._ca_subject and _PEER_SUBJECT.fullmatch(subject) is not None

    def _parsed_is_foreign(self, member: Member) -> bool:
        from cryptography import x509

        try:
            cert = x509.load_pem_x509_certificate(member.cert.encode("ascii"))
            if self._network is None:
                return True
            network = x509.load_pem_x509_certificate(self._network.cert_pem.encode("ascii"))
            # Names are parsed lazily: a malformed one raises here, not later.
            if _name_key(cert.subject) == _name_key(network.subject):
                # As an anchor it would stand in for the CA when issuers are looked up.
                log.warning(
                    "ignoring %s's certificate: it claims the network CA's name", member.name
                )
                return False
            return cert.issuer != network.subject
        except (ValueError, UnicodeEncodeError) as exc:
            log.warning("ignoring %s's unusable certificate: %s", member.name, exc)
            return False

    @property
    def foreign(self) -> int:
        """How many foreign members' contexts are kept."""
        return sum(1 for context in self._foreign.values() if context is not None)
