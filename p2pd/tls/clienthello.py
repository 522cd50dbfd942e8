"""The server name (SNI) a TLS client asks for, read from its first record. Pure.

A server that must choose its TLS context before the handshake (which
certificates to trust for this client) reads the client's first record
without consuming it, asks ``server_name``, and then hands the connection to
TLS as usual::

    header = <first 5 bytes>           length = record_length(header)
    record = <first 5 + length bytes>  name = server_name(record)

Only what RFC 8446 (§4.1.2, §5.1) and RFC 6066 (§3) allow is read: one
handshake record (content type 22, record version 0x0301 to 0x0304, at most
2**14 bytes) holding exactly one ClientHello (legacy version 0x0301 to
0x0304, random, session id of at most 32 bytes, a non-empty even list of
cipher suites, at least one compression method, then either nothing or
extensions filling the message exactly, no extension type twice).  The
server_name extension must hold exactly one ``host_name`` of 1 to 255
bytes, as OpenSSL requires; it is returned lowercased (DNS names ignore
case), and it must be a host name (ASCII letters, digits, ``-``, ``_`` and
``.``).  No extension, or none of type server_name, gives None: Python's ssl
sends none for an IP address or when no ``server_hostname`` is given.

A ClientHello split over several records is refused: the protocol allows it,
but no client does so at the sizes p2pd meets (OpenSSL, and so Python's ssl,
writes a ClientHello in one record; Python's measure 162 to 517 bytes, with a
253-character name too, far from the 16 384 a record holds).

Every length is checked before it is used, nothing is read past the end of
what was given, and malformed input of any kind raises ``ClientHelloError``
and nothing else.
"""

from __future__ import annotations

import re

RECORD_HEADER = 5
MAX_RECORD = 2**14
HANDSHAKE = 22
CLIENT_HELLO = 1
SERVER_NAME = 0
HOST_NAME = 0
_VERSIONS = range(0x0301, 0x0305)
_HOST = re.compile(rb"[A-Za-z0-9._-]{1,255}")


class ClientHelloError(ValueError):
    """The bytes are not a single-record TLS ClientHello this reader accepts."""


def record_length(header: bytes) -> int:
    """The length of the record that ``header`` (its first 5 bytes) starts: 1 to 16 384."""
    if len(header) != RECORD_HEADER:
        raise ClientHelloError(f"a record header is {RECORD_HEADER} bytes, not {len(header)}")
    if header[0] != HANDSHAKE:
        raise ClientHelloError(
            f"the first record is not a TLS handshake (content type {header[0]}):"
            " the client does not speak TLS here; connect with TLS"
        )
    version = int.from_bytes(header[1:3], "big")
    if version not in _VERSIONS:
        raise ClientHelloError(f"record version 0x{version:04x} is not TLS 1.0 to 1.3")
    length = int.from_bytes(header[3:5], "big")
    if not 1 <= length <= MAX_RECORD:
        raise ClientHelloError(f"record length {length} is not 1 to {MAX_RECORD}")
    return length


def server_name(record: bytes | bytearray | memoryview) -> str | None:
    """The host name a ClientHello asks for, or None; ``record`` is header and body."""
    length = record_length(bytes(record[:RECORD_HEADER]))
    if len(record) != RECORD_HEADER + length:
        raise ClientHelloError(
            f"the record has {len(record) - RECORD_HEADER} bytes after its header,"
            f" its header says {length}"
        )
    body = _Reader(memoryview(record)[RECORD_HEADER:], "record")
    if body.uint(1) != CLIENT_HELLO:
        raise ClientHelloError("the first handshake message is not a ClientHello")
    hello_length = body.uint(3)
    if hello_length > body.left:
        raise ClientHelloError(
            f"the ClientHello ({hello_length} bytes) is split over several records;"
            f" only a ClientHello within one record ({body.left} bytes here) is read"
        )
    hello = body.sub(hello_length, "ClientHello")
    body.finish()
    return _read_hello(hello)


def _read_hello(hello: _Reader) -> str | None:
    if hello.uint(2) not in _VERSIONS:
        raise ClientHelloError("the ClientHello's version is not TLS 1.0 to 1.3")
    hello.take(32, "random")
    hello.vector(1, "session id", most=32)
    suites = hello.vector(2, "cipher suites", least=2)
    if suites.left % 2:
        raise ClientHelloError("the cipher suites have an odd length")
    hello.vector(1, "compression methods", least=1)
    if not hello.left:
        return None  # no extensions at all: allowed before TLS 1.3, and no name
    extensions = hello.vector(2, "extensions")
    hello.finish()
    seen: set[int] = set()
    name = None
    while extensions.left:
        kind = extensions.uint(2)
        data = extensions.vector(2, f"extension {kind}")
        if kind in seen:
            raise ClientHelloError(f"extension {kind} appears twice")
        seen.add(kind)
        if kind == SERVER_NAME:
            name = _read_server_name(data)
    return name


def _read_server_name(data: _Reader) -> str:
    names = data.vector(2, "server name list", least=1)
    data.finish()
    if names.uint(1) != HOST_NAME:
        raise ClientHelloError("the server name is not of type host_name")
    host = names.vector(2, "host name", least=1).rest()
    names.finish()  # one name only, as OpenSSL requires
    if _HOST.fullmatch(host) is None:
        raise ClientHelloError("the server name is not a host name (ASCII letters, digits, -_.)")
    return host.decode("ascii").lower()


class _Reader:
    """Reads a bounded stretch of bytes front to back; every shortfall is a ClientHelloError."""

    __slots__ = ("_data", "_at", "_what")

    def __init__(self, data: memoryview, what: str) -> None:
        self._data = data
        self._at = 0
        self._what = what

    @property
    def left(self) -> int:
        return len(self._data) - self._at

    def take(self, count: int, what: str) -> memoryview:
        if count > self.left:
            raise ClientHelloError(
                f"the {what} needs {count} bytes, the {self._what} has {self.left} left"
            )
        piece = self._data[self._at : self._at + count]
        self._at += count
        return piece

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size, f"{size}-byte number"), "big")

    def sub(self, count: int, what: str) -> _Reader:
        return _Reader(self.take(count, what), what)

    def vector(
        self, length_size: int, what: str, least: int = 0, most: int | None = None
    ) -> _Reader:
        """A TLS vector: a ``length_size``-byte length, then that many bytes."""
        length = self.uint(length_size)
        most = 256**length_size - 1 if most is None else most
        if not least <= length <= most:
            raise ClientHelloError(f"the {what} has {length} bytes, not {least} to {most}")
        return self.sub(length, what)

    def rest(self) -> bytes:
        return bytes(self.take(self.left, self._what))

    def finish(self) -> None:
        if self.left:
            raise ClientHelloError(f"{self.left} stray bytes after the {self._what}")
