"""The independent peer as a serving member, from docs/protocol.md §1 and §4 alone.

A tiny HTTP/1.1 server over TLS 1.3 in plain threads: client certificates
required and chained to the network CA (§1, derived from the secret), a
member check at every request, ``GET``/``HEAD`` of ``/files`` and
``/files/<path>`` with ``Range`` and ``Repr-Digest`` (§4.2–§4.4).
Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

from tests.interop.indie_client import repr_digest, valid_path
from tests.interop.indie_identity import Identity, peer_id

MAX_HEAD = 16 * 1024
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
REASONS = {
    200: "OK",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    416: "Range Not Satisfiable",
    431: "Request Header Fields Too Large",
}


@dataclass(frozen=True)
class Seen:
    """A request as it arrived, for the test to look at."""

    client_id: str
    method: str
    target: str
    headers: dict[str, str]


@dataclass
class Answer:
    status: int
    fields: list[tuple[str, str]]
    body: bytes = b""
    #: Send only this many bytes of the body, then close (a connection lost mid-body).
    cut_at: int | None = None


@dataclass
class PeerServer:
    identity: Identity
    network_ca: str
    #: The share: relative path -> bytes.
    files: dict[str, bytes]
    is_member: Callable[[str], bool]
    seen: list[Seen] = field(default_factory=list)
    #: Paths whose next whole-file answer is cut after this many body bytes.
    cut_next: dict[str, int] = field(default_factory=dict)
    #: Whatever went wrong inside a connection thread; the test asserts it stays empty.
    faults: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(self.identity.cert_path, self.identity.key_path)
        context.verify_mode = ssl.CERT_REQUIRED
        # §1: p2pd members' certificates are issued by the network CA.
        context.load_verify_locations(cadata=self.network_ca)
        self._context = context
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._generation = time.time_ns() // 1000
        self._digests = {
            path: hashlib.sha256(data).hexdigest() for path, data in self.files.items()
        }

    def start(self) -> None:
        self._spawn(self._accept_loop)

    def stop(self) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(timeout=10)
        self._listener.close()

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._connection, sock)

    def _connection(self, sock: socket.socket) -> None:
        try:
            sock.settimeout(10)  # §4.5: the handshake within 10 s
            with self._context.wrap_socket(sock, server_side=True) as tls:
                der = tls.getpeercert(binary_form=True)
                assert der is not None  # CERT_REQUIRED
                self._requests(tls, peer_id(der))
        except (OSError, ValueError):  # a client that went away, a refused handshake
            sock.close()
        except Exception as exc:
            self.faults.append(repr(exc))
            sock.close()

    def _requests(self, tls: ssl.SSLSocket, client_id: str) -> None:
        buffer = b""
        tls.settimeout(0.5)
        idle_since = time.monotonic()
        while not self._stop.is_set():
            if b"\r\n\r\n" not in buffer:
                if len(buffer) > MAX_HEAD:
                    self._send(tls, _error(431, "header section too large"))
                    return
                try:
                    chunk = tls.recv(65536)
                except TimeoutError:
                    if time.monotonic() - idle_since > 60:  # §4.5: idle keep-alive
                        return
                    continue
                if not chunk:
                    return
                buffer += chunk
                continue
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            answer, close = self._answer(client_id, head.decode("latin-1"))
            self._send(tls, answer)
            if close or answer.cut_at is not None:
                return
            idle_since = time.monotonic()

    def _answer(self, client_id: str, head: str) -> tuple[Answer, bool]:
        request_line, *lines = head.split("\r\n")
        parts = request_line.split(" ")
        headers: dict[str, str] = {}
        for line in lines:
            name, colon, value = line.partition(":")
            if not colon:
                return _error(400, "bad request"), True
            headers[name.strip().lower()] = value.strip()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _error(400, "bad request"), True
        method, target, _ = parts
        self.seen.append(Seen(client_id, method, target, headers))
        close = headers.get("connection", "").lower() == "close"
        if "host" not in headers:  # §4: RFC 9112 §3.2
            return _error(400, "bad request"), True
        if not self.is_member(client_id):  # §1: at every request
            return _error(403, "not a member"), close
        if method not in ("GET", "HEAD"):
            return Answer(405, [("Allow", "GET, HEAD")], b""), close
        answer = self._route(target.split("?", 1)[0], headers)
        if method == "HEAD":
            answer.cut_at = None
            answer.fields.append(("Content-Length", str(len(answer.body))))
            answer.body = b""
        return answer, close

    def _route(self, path: str, headers: dict[str, str]) -> Answer:
        if path == "/files":
            files = [
                {"path": name, "size": len(data), "mtime": 0.0, "sha256": self._digests[name]}
                for name, data in sorted(self.files.items())
            ]
            body = json.dumps({"generation": self._generation, "files": files}).encode()
            etag = f'"{self._generation}"'
            if _matches(headers.get("if-none-match"), etag):
                return Answer(304, [("ETag", etag)])
            return Answer(200, [("Content-Type", "application/json"), ("ETag", etag)], body)
        if not path.startswith("/files/"):
            return _error(404, "not found")
        if _BAD_ESCAPE.search(path):
            return _error(400, "bad target")
        try:
            relative = unquote(path.removeprefix("/files/"), errors="strict")
        except UnicodeDecodeError:
            return _error(400, "bad target")
        if not valid_path(relative):
            return _error(400, "bad target")
        data = self.files.get(relative)
        if data is None:
            return _error(404, "not found")
        return self._file(relative, data, headers.get("range"))

    def _file(self, relative: str, data: bytes, range_header: str | None) -> Answer:
        sha256 = self._digests[relative]
        fields = [
            ("Content-Type", "application/octet-stream"),
            ("Accept-Ranges", "bytes"),
            ("ETag", f'"sha256-{sha256}"'),
            ("Repr-Digest", repr_digest(sha256)),  # §4.3: required
        ]
        size = len(data)
        match = _RANGE.fullmatch(range_header or "")
        if match is None or match.group(0) == "bytes=-" or size == 0:
            cut = self.cut_next.pop(relative, None)
            return Answer(200, fields, data, cut)
        first_text, last_text = match.groups()
        if first_text:
            first = int(first_text)
            last = min(int(last_text), size - 1) if last_text else size - 1
        else:
            first, last = max(size - int(last_text), 0), size - 1
        if first >= size or last < first or (not first_text and int(last_text) == 0):
            return _error(416, "range not satisfiable", [("Content-Range", f"bytes */{size}")])
        fields.append(("Content-Range", f"bytes {first}-{last}/{size}"))
        return Answer(206, fields, data[first : last + 1])

    @staticmethod
    def _send(tls: ssl.SSLSocket, answer: Answer) -> None:
        fields = list(answer.fields)
        # A 304 has no content, so no Content-Length (RFC 9110 §15.4.5).
        if answer.status != 304 and not any(name == "Content-Length" for name, _ in fields):
            fields.append(("Content-Length", str(len(answer.body))))
        if answer.cut_at is not None:
            fields.append(("Connection", "close"))
        lines = [f"HTTP/1.1 {answer.status} {REASONS[answer.status]}"]
        lines += [f"{name}: {value}" for name, value in fields]
        body = answer.body if answer.cut_at is None else answer.body[: answer.cut_at]
        tls.settimeout(30)  # §4.5: each write 30 s
        tls.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        tls.settimeout(0.5)


def _error(status: int, error: str, fields: list[tuple[str, str]] | None = None) -> Answer:
    """§4.4: every error answer has a JSON body ``{"error", "message"}``."""
    body = json.dumps({"error": error, "message": f"{error} (docs/protocol.md §4.4)"}).encode()
    return Answer(status, [("Content-Type", "application/json"), *(fields or [])], body)


def _matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 §13.1.2 by weak comparison: ``*`` or any listed tag, ``W/`` or not."""
    if if_none_match is None:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags
