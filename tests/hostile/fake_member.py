"""A fake member: a TLS server in threads whose answers the test writes byte for byte.

It uses the attacker's own certificate, requires a client certificate (the
victim's, as its only trust anchor) and registers with the real registryd like
any member, so that a real p2pd connects to it and believes what it says.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.hostile.attacker import Attacker

#: An answer ending with HANG is sent up to it, then the connection stays silent.
HANG = b"<hang>"
#: An answer ending with RESET is sent up to it, then the connection is reset (RST).
RESET = b"<reset>"

#: A route's answer: its bytes, or pieces sent one after another (a stream that may
#: go on until the victim hangs up), after which the connection is closed.
Answer = bytes | Iterable[bytes]


def http_response(
    status: int, body: bytes, headers: dict[str, str] | None = None, reason: str = "OK"
) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def listing(*files: dict[str, Any], generation: int = 1) -> bytes:
    body = json.dumps({"generation": generation, "files": list(files)}).encode()
    return http_response(200, body, {"Content-Type": "application/json", "ETag": f'"{generation}"'})


@dataclass
class FakeMember:
    """A TLS server in threads, with the attacker's certificate, requiring a client one."""

    who: Attacker
    trusted: list[str]
    routes: dict[str, Answer | Callable[[str], Answer]]
    port: int = 0
    targets: list[str] = field(default_factory=list)
    #: The head of each request, in order (a route may look at the last one's Range).
    heads: list[bytes] = field(default_factory=list)
    #: Called before a RESET, e.g. to wait until the victim read what was sent
    #: (a reset destroys what the victim's kernel holds unread).
    before_reset: Callable[[], object] = lambda: None
    _stop: threading.Event = field(default_factory=threading.Event)
    #: The head of the request this thread answers now (connections run concurrently).
    _local: threading.local = field(default_factory=threading.local)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(self.who.cert_path, self.who.key_path)
        context.verify_mode = ssl.CERT_REQUIRED
        # p2pd's certificate is issued by the network CA (docs/protocol.md §1):
        # pinning it as the only anchor takes partial-chain verification.
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        context.load_verify_locations(cadata="".join(self.trusted))
        self._context = context
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]

    def __enter__(self) -> FakeMember:
        self._spawn(self._accept_loop)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(timeout=10)
        self._listener.close()

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            with self._context.wrap_socket(conn, server_side=True) as sock:
                sock.settimeout(0.2)
                buffer = b""
                while not self._stop.is_set():
                    try:
                        chunk = sock.recv(65536)
                    except TimeoutError:
                        continue
                    if not chunk:
                        return
                    buffer += chunk
                    while b"\r\n\r\n" in buffer:
                        head, buffer = buffer.split(b"\r\n\r\n", 1)
                        target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode("latin-1")
                        self.heads.append(head)
                        self.targets.append(target)
                        self._local.head = head
                        answer = self._answer(target)
                        sock.settimeout(30)
                        if not isinstance(answer, bytes):
                            for piece in answer:
                                if self._stop.is_set():
                                    break
                                sock.sendall(piece)
                            return
                        if answer.endswith(HANG):
                            sock.sendall(answer[: -len(HANG)])
                            self._stop.wait()
                            return
                        if answer.endswith(RESET):
                            sock.sendall(answer[: -len(RESET)])
                            self.before_reset()
                            linger = struct.pack("ii", 1, 0)
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                            return
                        sock.sendall(answer)
                        sock.settimeout(0.2)
        except (OSError, ssl.SSLError, ValueError, IndexError):
            return

    def current_head(self) -> bytes:
        """The head of the request being answered, for a route run in its thread."""
        head: bytes = self._local.head
        return head

    def _answer(self, target: str) -> Answer:
        route = self.routes.get(target)
        if route is None:
            for prefix, value in self.routes.items():
                if prefix.endswith("*") and target.startswith(prefix[:-1]):
                    route = value
        if route is None:
            return http_response(404, b'{"error":"not found"}', reason="Not Found")
        return route(target) if callable(route) else route
