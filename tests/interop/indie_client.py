"""The independent peer as a downloader, from docs/protocol.md §1 and §4 alone.

TLS 1.3 with its own certificate and its id as SNI (it is a foreign member:
§1), the serving member pinned by its id (§1),
a listing validated before use (§4.1, §4.2), and a file fetched in ranges,
each answer checked against the listing before its bytes are kept (§4.3).
Standard library only.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import ssl
from typing import Any, Literal
from urllib.parse import quote

from tests.interop.indie_identity import Identity, peer_id

#: §1: how the downloader pins the serving member.
Pin = Literal["partial-chain", "id-only"]
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\\\\]")
MAX_LISTING = 64 * 1024 * 1024


class Refused(Exception):
    """The member cannot be used: unreachable, not the pinned certificate, or a bad answer."""


class NamedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address, with ``server_name`` as SNI (§1: a foreign member sends its
    id; http.client would send the address, or nothing for an IP address)."""

    def __init__(
        self, host: str, port: int, *, context: ssl.SSLContext, timeout: float, server_name: str
    ) -> None:
        super().__init__(host, port, context=context, timeout=timeout)
        self._tls = context
        self._server_name = server_name

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._tls.wrap_socket(self.sock, server_hostname=self._server_name)


def valid_path(path: object) -> bool:
    """§4.1, the path rule."""
    if not isinstance(path, str) or not path or _CONTROL.search(path):
        return False
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    segments = path.split("/")
    return len(encoded) <= 4096 and all(
        segment and not segment.startswith(".") and len(segment.encode("utf-8")) <= 255
        for segment in segments
    )


def validate_listing(body: bytes) -> list[dict[str, Any]]:
    """§4.2: the whole listing is refused if any entry fails."""
    if len(body) > MAX_LISTING:
        raise Refused("listing over 64 MiB")
    payload = json.loads(body)
    generation = payload.get("generation", 0)
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise Refused(f"bad generation {generation!r}")
    files = payload["files"]
    for entry in files:
        size, mtime = entry.get("size"), entry.get("mtime")
        if (
            not valid_path(entry.get("path"))
            or not isinstance(size, int)
            or isinstance(size, bool)
            or size < 0
            or not isinstance(mtime, int | float)
            or not _SHA256_HEX.fullmatch(str(entry.get("sha256")))
        ):
            raise Refused(f"invalid listing entry {entry!r}")
    return list(files)


def repr_digest(sha256_hex: str) -> str:
    """§4.3: the listing's sha256, its 32 bytes in base64, as an RFC 9530 field."""
    return "sha-256=:" + base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii") + ":"


class PeerClient:
    def __init__(self, identity: Identity) -> None:
        self._identity = identity

    def _context(self, member_cert: str, pin: Pin) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(self._identity.cert_path, self._identity.key_path)
        context.check_hostname = False  # §1: a certificate names no host
        if pin == "partial-chain":
            # The member's certificate is the only anchor, trusted by itself.
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
            context.load_verify_locations(cadata=member_cert)
        else:
            # A stack without partial-chain verification: any chain in the
            # handshake, then the id check below is the whole pin.
            context.verify_mode = ssl.CERT_NONE
        return context

    def connect(self, member: dict[str, Any], pin: Pin) -> http.client.HTTPSConnection:
        """§1: dial the member's addresses in order; keep the first that is the member."""
        context = self._context(member["cert"], pin)
        failures = []
        for address in member["addresses"]:
            host, _, port = address.rpartition(":")
            connection = NamedHTTPSConnection(
                host.strip("[]"),
                int(port),
                context=context,
                timeout=20,
                server_name=self._identity.id,
            )
            try:
                connection.connect()
            except OSError as exc:  # ssl.SSLError included
                connection.close()
                failures.append(f"{address}: {exc}")
                continue
            assert connection.sock is not None
            presented = connection.sock.getpeercert(binary_form=True)
            if presented is None or peer_id(presented) != member["id"]:
                connection.close()
                failures.append(f"{address}: not the member's certificate")
                continue
            return connection
        raise Refused(f"no address of {member['name']} is usable: {failures}")

    def get(
        self, member: dict[str, Any], target: str, headers: dict[str, str], pin: Pin
    ) -> tuple[int, dict[str, str], bytes]:
        connection = self.connect(member, pin)
        try:
            connection.request("GET", target, headers=headers)  # http.client sends Host
            response = connection.getresponse()
            body = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, body
        finally:
            connection.close()

    def listing(self, member: dict[str, Any], pin: Pin = "partial-chain") -> list[dict[str, Any]]:
        """§4.2 ``GET /files``."""
        status, _, body = self.get(member, "/files", {}, pin)
        if status != 200:
            raise Refused(f"GET /files answered {status}: {body[:200]!r}")
        return validate_listing(body)

    def fetch(self, member: dict[str, Any], entry: dict[str, Any], piece: int, pin: Pin) -> bytes:
        """§4.3 ``GET /files/<path>`` piece by piece with ``Range``, each answer checked."""
        target = "/files/" + quote(entry["path"], safe="/")
        received = bytearray()
        size = entry["size"]
        while len(received) < size:
            first, last = len(received), min(len(received) + piece, size) - 1
            status, fields, body = self.get(member, target, {"Range": f"bytes={first}-{last}"}, pin)
            if status != 206:
                raise Refused(f"asked bytes {first}-{last}, got {status}")
            if fields.get("repr-digest") != repr_digest(entry["sha256"]):
                raise Refused(f"Repr-Digest {fields.get('repr-digest')!r} is not the listed one")
            if fields.get("content-range") != f"bytes {first}-{last}/{size}":
                raise Refused(f"Content-Range {fields.get('content-range')!r}")
            if len(body) != last - first + 1:
                raise Refused(f"{len(body)} bytes for a range of {last - first + 1}")
            received += body
        if hashlib.sha256(received).hexdigest() != entry["sha256"]:
            raise Refused("the bytes received are not the listed file")
        return bytes(received)
