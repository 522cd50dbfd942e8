"""The attacker's tools: its own certificate, hand-signed registry requests, raw HTTP.

Nothing here uses the project's clients (RegistryClient, PeerPool, PeerConnection)
or p2pcommon.signing.signer: an attacker builds its bytes itself, and so do these tests.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import hmac
import json
import os
import secrets
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tests.support import SECRET, VENV_BIN

COMPONENTS = ("@method", "@path", "content-digest")


# -- identity -----------------------------------------------------------------


def peer_id_of(der: bytes) -> str:
    return base64.b32encode(hashlib.sha256(der).digest()).decode("ascii").rstrip("=").lower()


@dataclass(frozen=True)
class Attacker:
    """An ECDSA P-256 key and a self-signed certificate, on disk for ``ssl``."""

    cert_pem: str
    cert_der: bytes
    cert_path: Path
    key_path: Path
    id: str

    @classmethod
    def new(cls, directory: Path) -> Attacker:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, f"mallory {secrets.token_hex(8)}")]
        )
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls.of(directory, cert, key)

    @classmethod
    def of(
        cls, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
    ) -> Attacker:
        """``cert`` and ``key``, written to ``directory`` (named by the id) for ``ssl``."""
        der = cert.public_bytes(serialization.Encoding.DER)
        pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        directory.mkdir(parents=True, exist_ok=True)
        ident = peer_id_of(der)
        cert_path, key_path = directory / f"{ident}.crt", directory / f"{ident}.key"
        cert_path.write_text(pem)
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cls(pem, der, cert_path, key_path, ident)

    def key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key


# -- RFC 9421 by hand ---------------------------------------------------------


def content_digest(body: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii") + ":"


def sign(
    method: str,
    path: str,
    body: bytes,
    *,
    secret: str = SECRET,
    created: int | None = None,
    nonce: str | None = None,
    components: tuple[str, ...] = COMPONENTS,
    digest: str | None = None,
    member: tuple[str, ec.EllipticCurvePrivateKey] | None = None,
) -> dict[str, str]:
    """Content-Digest, Signature-Input and Signature over the base of RFC 9421 §2.5.

    With ``member`` (an id and a key), the register's second signature too
    (docs/protocol.md §2.4): labelled ``member``, ECDSA P-256 as RFC 9421
    §3.3.4 has it (raw r‖s), over the same components, created and nonce.
    """
    digest = digest if digest is not None else content_digest(body)
    created = int(time.time()) if created is None else created
    nonce = nonce or secrets.token_urlsafe(16)
    values = {"@method": method.upper(), "@path": path, "content-digest": digest}
    inner = " ".join(f'"{c}"' for c in components)
    params = f'({inner});created={created};keyid="p2p";alg="hmac-sha256";nonce="{nonce}"'
    mac = hmac.digest(secret.encode("utf-8"), signature_base(values, components, params), "sha256")
    headers = {
        "Content-Digest": digest,
        "Signature-Input": f"sig={params}",
        "Signature": f"sig=:{base64.b64encode(mac).decode('ascii')}:",
    }
    if member is not None:
        member_id, key = member
        params = (
            f'({inner});created={created};keyid="{member_id}";alg="ecdsa-p256-sha256"'
            f';nonce="{nonce}"'
        )
        raw = ecdsa_raw(key, signature_base(values, components, params))
        headers["Signature-Input"] += f", member={params}"
        headers["Signature"] += f", member=:{base64.b64encode(raw).decode('ascii')}:"
    return headers


def signature_base(values: dict[str, str], components: tuple[str, ...], params: str) -> bytes:
    lines = [f'"{c}": {values[c]}' for c in components]
    lines.append(f'"@signature-params": {params}')
    return "\n".join(lines).encode("utf-8")


def ecdsa_raw(key: ec.EllipticCurvePrivateKey, base: bytes) -> bytes:
    """ECDSA P-256 over SHA-256, as RFC 9421 §3.3.4 encodes it: r and s, 32 bytes each."""
    r, s = decode_dss_signature(key.sign(base, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


# -- raw HTTP -----------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Closed(Exception):
    """The other side closed (or reset) before a whole answer arrived."""


def build_request(method: str, target: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: victim"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _recv(sock: socket.socket, n: int = 65536) -> bytes:
    try:
        return sock.recv(n)
    except (ConnectionError, ssl.SSLError) as exc:
        raise Closed(repr(exc)) from None


def read_response(sock: socket.socket, *, limit: int = 64 * 1024 * 1024) -> RawResponse:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = _recv(sock)
        if not chunk:
            raise Closed(f"closed after {len(buffer)} bytes of head: {buffer[:200]!r}")
        buffer += chunk
    head, rest = buffer.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        length = int(headers["content-length"])
        received = bytearray(rest)  # not bytes: += would copy it all again for every record
        while len(received) < length:
            chunk = _recv(sock, min(1 << 20, length - len(received)))
            if not chunk:
                raise Closed(f"body cut at {len(received)} of {length}")
            received += chunk
        return RawResponse(status, headers, bytes(received[:length]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += _recv(sock) or b"\r\n0\r\n"
            size_text, rest = rest.split(b"\r\n", 1)
            size = int(size_text.split(b";")[0], 16)
            while len(rest) < size + 2:
                chunk = _recv(sock)
                if not chunk:
                    raise Closed("chunked body cut")
                rest += chunk
            body, rest = body + rest[:size], rest[size + 2 :]
            if size == 0 or len(body) > limit:
                return RawResponse(status, headers, body)
    while len(rest) < limit and (chunk := _recv(sock)):
        rest += chunk
    return RawResponse(status, headers, rest)


def tcp(port: int, *, source: str | None = None, timeout: float = 15) -> socket.socket:
    """A TCP connection to loopback, from ``source`` (any 127.x address) if given."""
    address = (source, 0) if source else None
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=address)


def http(port: int, raw: bytes, *, source: str | None = None, timeout: float = 15) -> RawResponse:
    """Send ``raw`` and read one answer; a server may answer before the body is all in."""
    with tcp(port, source=source, timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw)
        return read_response(sock)


def rst_connect(port: int, payload: bytes = b"") -> None:
    """Connect, maybe send a little, and reset (SO_LINGER 0): no FIN, just RST."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    try:
        sock.connect(("127.0.0.1", port))
        if payload:
            sock.sendall(payload)
    finally:
        sock.close()


# -- the registry, signed by hand --------------------------------------------


def registry_port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def signed(
    url: str,
    method: str,
    path: str,
    payload: Any = None,
    *,
    source: str | None = None,
    query: str = "",
    **sign_kw: Any,
) -> RawResponse:
    """``path`` signed (``"@path"`` has no query), sent with ``query`` after it."""
    body = b"" if payload is None else json.dumps(payload).encode()
    headers = sign(method, path, body, **sign_kw)
    if payload is not None:
        headers["Content-Type"] = "application/json"
    raw = build_request(method, path + query, headers, body)
    return http(registry_port(url), raw, source=source)


def register(
    url: str,
    who: Attacker,
    name: str,
    port: int,
    *,
    source: str | None = None,
    **fields: Any,
) -> RawResponse:
    """Register ``who`` as a member does: proven by its own key (docs/protocol.md §2.4)."""
    payload = {"id": who.id, "name": name, "cert": who.cert_pem, "port": port, **fields}
    return signed(url, "POST", "/register", payload, source=source, member=(who.id, who.key()))


def joined(url: str, who: Attacker, name: str, port: int, **fields: Any) -> str:
    """Register ``who``; the lease its heartbeats and its leave show."""
    answer = register(url, who, name, port, **fields)
    assert answer.status == 200, answer
    lease: str = answer.json()["lease"]
    return lease


def members(url: str) -> list[dict[str, Any]]:
    """Every member, page by page (fresh from the store; ``/clients`` may be a second old)."""
    result: list[dict[str, Any]] = []
    after = ""
    while True:
        query = f"?after={after}&limit=1000" if after else "?limit=1000"
        answer = signed(url, "GET", "/members", query=query)
        assert answer.status == 200, answer
        page = answer.json()
        result += page["members"]
        if page["next"] is None:
            return result
        after = page["next"]


# -- TLS to and from p2pd ----------------------------------------------------


class NamingContext(ssl.SSLContext):
    """A client context whose connections send ``own_id`` as SNI unless given a name,
    as p2pd's own client does: a foreign member names itself (docs/protocol.md §1)."""

    own_id: str | None = None

    def wrap_socket(  # type: ignore[override]
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(
            sock,
            server_side,
            do_handshake_on_connect,
            suppress_ragged_eofs,
            server_hostname if server_hostname is not None or server_side else self.own_id,
            session,
        )


def client_context(who: Attacker | None, *, sni: str | bool = True) -> ssl.SSLContext:
    """``sni``: True, ``who``'s id as SNI; False, no SNI; a string, that name."""
    context = NamingContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # an attacker does not care who answers
    if who is not None:
        context.load_cert_chain(who.cert_path, who.key_path)
    if isinstance(sni, str):
        context.own_id = sni
    elif sni and who is not None:
        context.own_id = who.id
    return context


def tls(
    port: int,
    who: Attacker | None,
    timeout: float = 15,
    *,
    sni: str | bool = True,
    source: str | None = None,
) -> ssl.SSLSocket:
    """``sni`` as ``client_context`` takes it; ``source``: the local address to connect from."""
    sock = tcp(port, timeout=timeout, source=source)
    try:
        return client_context(who, sni=sni).wrap_socket(sock)
    except BaseException:
        sock.close()
        raise


def peer_get(
    port: int,
    who: Attacker | None,
    target: str,
    headers: dict[str, str] | None = None,
    *,
    sni: str | bool = True,
    source: str | None = None,
) -> RawResponse:
    with tls(port, who, sni=sni, source=source) as sock:
        sock.sendall(build_request("GET", target, headers or {}))
        return read_response(sock)


def refused(
    port: int, who: Attacker | None, target: str = "/files", *, sni: str | bool = True
) -> bool:
    """True if the peer refuses ``who`` in the handshake or with 403, with no file byte.

    Silence is no refusal: a peer that leaves the stranger hanging raises TimeoutError.
    """
    try:
        answer = peer_get(port, who, target, sni=sni)
    except (Closed, ssl.SSLError, ConnectionError):
        return True
    return answer.status == 403


# -- watching the victim ------------------------------------------------------


def poll(check: Callable[[], bool], *, timeout: float, what: str, every: float = 0.1) -> float:
    """Poll until ``check()``; returns the seconds it took, fails with ``what``."""
    started = time.monotonic()
    while True:
        if check():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def ctl(socket_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "p2pctl"), "--socket", str(socket_path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def rpc(socket_path: Path, method: str, params: Any = None, timeout: float = 10) -> Any:
    """One JSON-RPC call over the control socket, by hand."""
    request: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        request["params"] = params
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        while True:  # a full accept queue says EAGAIN: a client waits, within the timeout
            try:
                sock.connect(str(socket_path))
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        sock.sendall(json.dumps(request).encode() + b"\n")
        buffer = b""
        while True:
            while b"\n" not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    raise Closed(f"control socket closed: {buffer[:200]!r}")
                buffer += chunk
            line, buffer = buffer.split(b"\n", 1)
            message = json.loads(line)
            if message.get("id") == 1:
                return message


def assert_serving(process: subprocess.Popen[str], socket_path: Path, log: str = "") -> None:
    """The daemon is alive and answers `p2pctl status --json`."""
    assert process.poll() is None, f"the daemon ended with {process.returncode}:\n{log[-3000:]}"
    result = ctl(socket_path, "--json", "status", timeout=30)
    assert result.returncode == 0, f"p2pctl status failed: {result.stderr}\n{log[-3000:]}"
    assert json.loads(result.stdout)["registered"] in (True, False)


def files_under(root: Path, skip: tuple[Path, ...] = ()) -> set[Path]:
    found: set[Path] = set()
    for dirpath, _, names in os.walk(root):
        here = Path(dirpath)
        if any(here == s or s in here.parents for s in skip):
            continue
        found.update(here / n for n in names)
    return found


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
