"""The peer server as RFC 9110 says a server behaves (docs/protocol.md §4).

A real PeerServer on loopback with its TLS; the client side is Python's
``ssl`` and raw HTTP/1.1, so what is checked is the bytes a standard client
sees: validators, conditional requests, HEAD, 304 framing and TLS alerts.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from p2pcommon.http.events import Request, Response
from p2pcommon.models import Member
from p2pd.peer.server import PeerServer
from p2pd.share.watching import Share
from p2pd.tls.contexts import ServerContexts
from p2pd.tls.identity import load_or_create
from tests.hostile.attacker import Attacker, build_request, client_context
from tests.p2pd.live_registry import live_registry

DATA = os.urandom(300_000)
DIGEST = hashlib.sha256(DATA).hexdigest()
FILE_ETAG = f'"sha256-{DIGEST}"'


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def read_answer(sock: ssl.SSLSocket, buffer: bytearray, *, bodiless: bool) -> Answer:
    """One answer off a kept-alive connection; ``buffer`` keeps what follows it."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-head: {bytes(buffer)!r}"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        assert name.lower() not in headers, f"{name} sent twice"
        headers[name.lower()] = value.strip()
    status = int(status_line.split()[1])
    # A 304 has no content whatever its headers say (RFC 9110 §6.4.1).
    length = 0 if bodiless or status == 304 else int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed mid-body"
        rest += chunk
    buffer[:] = rest[length:]
    return Answer(status, headers, rest[:length])


class Client:
    """A member's kept-alive TLS connection, speaking raw HTTP/1.1 (blocking)."""

    def __init__(self, port: int, who: Attacker) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = client_context(who).wrap_socket(raw)
        self.buffer = bytearray()

    def ask(self, method: str, target: str, headers: dict[str, str] | None = None) -> Answer:
        self.sock.sendall(build_request(method, target, headers or {}))
        answer = read_answer(self.sock, self.buffer, bodiless=method == "HEAD")
        if method == "HEAD" or answer.status == 304:
            # Nothing may follow a bodiless answer: the next request's answer
            # must be the next bytes (h11 on our side would choke otherwise).
            assert not self.buffer
        return answer

    def close(self) -> None:
        self.sock.close()


@dataclass
class Served:
    server: PeerServer
    share: Share
    port: int
    member: Attacker
    root: Path

    async def ask(self, method: str, target: str, headers: dict[str, str] | None = None) -> Answer:
        client = await trio.to_thread.run_sync(Client, self.port, self.member)
        try:
            return await trio.to_thread.run_sync(client.ask, method, target, headers)
        finally:
            client.close()


@asynccontextmanager
async def served(tmp_path: Path, upload_slots: int = 2) -> AsyncIterator[Served]:
    root, state = tmp_path / "share", tmp_path / "state"
    root.mkdir(exist_ok=True)
    state.mkdir(exist_ok=True)
    if not (root / "data.bin").exists():
        (root / "data.bin").write_bytes(DATA)
    identity, _ = load_or_create(state)
    member = Attacker.new(tmp_path / "member")
    share = Share(root, state)
    await share.rescan()
    async with (
        live_registry(
            [Member(id=member.id, name="m", addresses=[], cert=member.cert_pem, last_seen=0)]
        ) as registry,
        trio.open_nursery() as nursery,
    ):
        server = PeerServer(
            share,
            registry.directory(identity.id),
            ServerContexts(identity),
            upload_slots=upload_slots,
            rate_limit=0,
        )
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(server.http.run, listeners)
        yield Served(server, share, listeners[0].socket.getsockname()[1], member, root)
        await server.http.shutdown(1)
    assert server.stats.active == 0  # every slot and file handed back


async def test_a_listing_etag_is_never_reused_by_a_restarted_member(tmp_path: Path) -> None:
    """Generations count from the start time: a restart never repeats an old ETag."""
    async with served(tmp_path) as s:
        before = await s.ask("GET", "/files")
        etag = before.headers["etag"]
        assert etag == f'"{json.loads(before.body)["generation"]}"'
    # The member restarts (a fresh index over the same folders) with another
    # listing after as many changes: its generation must not say "the same".
    (tmp_path / "share" / "data.bin").write_bytes(b"other bytes")
    async with served(tmp_path) as s:
        after = await s.ask("GET", "/files", {"If-None-Match": etag})
        assert after.status == 200 and after.headers["etag"] != etag
        generation = json.loads(after.body)["generation"]
        assert generation > json.loads(before.body)["generation"]
        assert after.headers["etag"] == f'"{generation}"'
        # Within one run the generation still rises by one per change.
        (s.root / "new.txt").write_bytes(b"new")
        await s.share.rescan()
        changed = await s.ask("GET", "/files")
        assert changed.headers["etag"] == f'"{generation + 1}"'


@pytest.mark.parametrize(
    "condition",
    ["{tag}", "W/{tag}", '"nope", {tag}', ' , "x,y" ,, W/{tag} , ', "*"],
)
async def test_if_none_match_lists_weak_tags_and_star(tmp_path: Path, condition: str) -> None:
    async with served(tmp_path) as s:
        listing = await s.ask("GET", "/files")
        for target, tag in (("/files", listing.headers["etag"]), ("/files/data.bin", FILE_ETAG)):
            for method in ("GET", "HEAD"):
                answer = await s.ask(method, target, {"If-None-Match": condition.format(tag=tag)})
                assert (answer.status, answer.body) == (304, b""), (target, method)
                assert answer.headers["etag"] == tag
                # RFC 9110 §15.4.5: no content, and no length that would describe it.
                assert "content-length" not in answer.headers
                assert "transfer-encoding" not in answer.headers
                assert "date" in answer.headers


async def test_if_none_match_that_does_not_match_gets_the_whole_answer(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        for condition in ('"nope"', 'W/"nope", "other"', "not-a-tag", f"{FILE_ETAG}x"):
            answer = await s.ask("GET", "/files/data.bin", {"If-None-Match": condition})
            assert (answer.status, answer.body) == (200, DATA), condition
            assert answer.headers["etag"] == FILE_ETAG


async def test_file_answers_carry_a_strong_etag_and_honour_if_range(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        whole = await s.ask("GET", "/files/data.bin")
        assert (whole.status, whole.body, whole.headers["etag"]) == (200, DATA, FILE_ETAG)
        part = await s.ask("GET", "/files/data.bin", {"Range": "bytes=100-", "If-Range": FILE_ETAG})
        assert (part.status, part.body, part.headers["etag"]) == (206, DATA[100:], FILE_ETAG)
        assert part.headers["content-range"] == f"bytes 100-{len(DATA) - 1}/{len(DATA)}"
        for stale in ('"sha256-00"', f"W/{FILE_ETAG}", "Tue, 14 Nov 2023 22:13:20 GMT"):
            answer = await s.ask(
                "GET", "/files/data.bin", {"Range": "bytes=100-", "If-Range": stale}
            )
            assert (answer.status, answer.body) == (200, DATA), stale
            assert "content-range" not in answer.headers
        # A failed If-Range drops the Range, even one that could not be satisfied.
        answer = await s.ask(
            "GET", "/files/data.bin", {"Range": "bytes=999999999-", "If-Range": '"old"'}
        )
        assert (answer.status, answer.body) == (200, DATA)


async def test_head_has_gets_headers_and_no_body(tmp_path: Path) -> None:
    async with served(tmp_path, upload_slots=1) as s:
        for target, headers in (
            ("/files", {}),
            ("/files/data.bin", {}),
            ("/files/data.bin", {"Range": "bytes=-10"}),
            ("/files/data.bin", {"Range": "bytes=10-", "If-Range": FILE_ETAG}),
        ):
            client = await trio.to_thread.run_sync(Client, s.port, s.member)
            try:
                head = await trio.to_thread.run_sync(client.ask, "HEAD", target, headers)
                # The same connection goes on: HEAD sent nothing after its head.
                got = await trio.to_thread.run_sync(client.ask, "GET", target, headers)
            finally:
                client.close()
            assert head.status == got.status in (200, 206)
            assert head.body == b""
            head.headers.pop("date")
            got.headers.pop("date")
            assert head.headers == got.headers
            assert int(head.headers["content-length"]) == len(got.body)
        assert s.server.stats.active == 0


async def test_head_takes_no_upload_slot(tmp_path: Path) -> None:
    async with served(tmp_path, upload_slots=1) as s:
        request = Request("GET", "/files/data.bin", [], b"", "127.0.0.1", s.member.id)
        holding: Response = await s.server.handle(request)  # the one slot, not yet sent
        try:
            with trio.fail_after(1):  # a slot wait would be 2 s, then 503
                head = await s.ask("HEAD", "/files/data.bin")
            assert head.status == 200 and head.headers["content-length"] == str(len(DATA))
        finally:
            aclose = getattr(holding.stream, "aclose", None)
            assert aclose is not None
            await aclose()


async def test_other_methods_are_told_what_is_allowed(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        answer = await s.ask("DELETE", "/files/data.bin")
        assert answer.status == 405 and answer.headers["allow"] == "GET, HEAD"


# -- refused handshakes end with an alert that names the reason ----------------


def refusal(port: int, context: ssl.SSLContext) -> str:
    """The reason our TLS client is given (OpenSSL's name for the alert it got)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw) as sock:
                # TLS 1.3: the server checks our certificate after our side
                # is done, so its alert arrives with the first read.
                sock.sendall(build_request("GET", "/files", {}))
                data = sock.recv(65536)
        except ssl.SSLError as exc:
            return str(exc.reason)
        except OSError as exc:
            return f"no alert: {exc!r}"
    return f"no alert: {data[:100]!r}"


@pytest.mark.parametrize(
    ("who", "reason"),
    [
        ("nobody", "TLSV13_ALERT_CERTIFICATE_REQUIRED"),
        ("stranger", "TLSV1_ALERT_UNKNOWN_CA"),
        ("tls 1.2", "TLSV1_ALERT_PROTOCOL_VERSION"),
    ],
)
async def test_a_refused_handshake_ends_with_an_alert(
    tmp_path: Path, who: str, reason: str
) -> None:
    async with served(tmp_path) as s:
        if who == "nobody":
            context = client_context(None)
        elif who == "stranger":
            context = client_context(Attacker.new(tmp_path / "stranger"))
        else:
            context = client_context(s.member)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.maximum_version = ssl.TLSVersion.TLSv1_2
        for _ in range(3):  # every time, not by luck of timing
            assert await trio.to_thread.run_sync(refusal, s.port, context) == reason
        # And the member is still served.
        assert (await s.ask("GET", "/files/data.bin")).body == DATA
