"""A small HTTP/1.1 client: h11 for the protocol, trio for the I/O.

The counterpart of ``p2pcommon.http.server``, for talking to registries (and
to members: it runs over any ``trio.abc.Stream``, so a caller that sets up
its own TLS and checks the certificate hands over the stream).  One request
at a time per connection, kept alive between requests; every wait has a
deadline (connect, each write, each silence while reading) and a body is
read with a cap, because whatever answers is not trusted before its answer
is checked.  It replaces httpx, which with httpcore and anyio cost the
daemon a few MiB to send one small request every few seconds.

Errors are one exception, ``HttpClientError``, whose message says what went
wrong in words, naming the server as the caller calls it.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import h11
import trio

#: Seconds to set up TCP (and TLS) with a server.
CONNECT_TIMEOUT = 5.0
#: Seconds a server may stay silent while we wait for bytes, or stop reading ours.
READ_TIMEOUT = 20.0
WRITE_TIMEOUT = 20.0
RECEIVE_SIZE = 64 * 1024
#: Bytes of a head, as the server's limit (h11 raises past it).
MAX_HEAD = 16 * 1024
#: Methods that carry a body, so ``Content-Length: 0`` is sent even for an empty one.
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


class HttpClientError(Exception):
    """The exchange failed; the message says why in words."""


class ClosedWithoutAnswer(HttpClientError):
    """The server closed (or reset) the connection before any byte of an answer:
    on a kept-alive connection, most likely closed as idle before our request
    arrived, so one more try on a fresh connection is the usual remedy."""


class AnswerTooLarge(HttpClientError):
    """The answer's body is larger than the reader's ``limit``."""

    def __init__(self, name: str, limit: int) -> None:
        super().__init__(f"{name} sent more than {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class Head:
    status: int
    #: Header fields in wire order, names lowercased (as h11 gives them).
    fields: list[tuple[str, str]]
    #: The status line's reason phrase, as the server wrote it.
    reason: str = ""

    def header(self, name: str) -> str | None:
        """A field's value (the values of a repeated field joined), by lowercase name."""
        values = [v for n, v in self.fields if n == name]
        return ", ".join(values) if values else None

    @property
    def headers(self) -> dict[str, str]:
        """The fields as a dict; a repeated field keeps its last value."""
        return dict(self.fields)


@dataclass(frozen=True)
class Origin:
    """Where an http:// or https:// URL points: what to connect to, what to send as Host."""

    tls: bool
    host: str
    port: int
    #: For the Host field: host[:port], without any credentials.
    netloc: str
    path: str

    @classmethod
    def of(cls, url: str) -> Origin:
        """ValueError saying what is wrong with ``url``."""
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)  # ValueError for a port out of range
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http:// or https:// URL")
        return cls(tls, parts.hostname, port, parts.netloc.rpartition("@")[2], parts.path)


def error_reason(exc: BaseException) -> str:
    """Why ``exc`` happened, in words (its cause; the first of a group)."""
    reason: BaseException = exc.__cause__ or exc
    # trio reports "all attempts to connect failed" with the real reasons in a
    # group: show the first, not "(1 sub-exception)".
    while isinstance(reason, BaseExceptionGroup) and reason.exceptions:
        reason = reason.exceptions[0]
    return str(reason) or type(reason).__name__


async def connect(
    host: str,
    port: int,
    *,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> trio.abc.Stream:
    """A TCP stream to ``host:port``, with TLS (handshake done) if ``tls`` is given.

    ``server_hostname`` is what the certificate must name (default ``host``),
    checked if the context checks host names.
    """
    tcp: trio.SocketStream | None = None
    try:
        with trio.fail_after(connect_timeout):
            tcp = await trio.open_tcp_stream(host, port)
            if tls is None:
                stream: trio.abc.Stream = tcp
            else:
                stream = trio.SSLStream(
                    tcp, tls, server_hostname=server_hostname or host, https_compatible=True
                )
                await stream.do_handshake()
        tcp = None  # handed over
        return stream
    except trio.TooSlowError:
        raise HttpClientError(
            f"cannot connect to {host}:{port} within {connect_timeout:g} s"
        ) from None
    except (OSError, trio.BrokenResourceError) as exc:
        raise HttpClientError(f"cannot connect to {host}:{port}: {error_reason(exc)}") from None
    finally:
        if tcp is not None:
            await trio.aclose_forcefully(tcp)


def tls_context(verify: bool | ssl.SSLContext = True) -> ssl.SSLContext:
    """The context for an https:// server.

    ``True``: the certificate must chain to the system's trust store (what
    the host's administrator trusts: ``/etc/ssl/certs`` on Debian, a private
    CA added with ``update-ca-certificates`` included; OpenSSL's
    ``SSL_CERT_FILE``/``SSL_CERT_DIR`` override it) and name the host;
    ``False``: anything goes (tests); a context: used as it is.
    """
    if isinstance(verify, ssl.SSLContext):
        return verify
    if not verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context()


class ClientConnection:
    """One kept-alive connection; requests run one at a time.

    ``name`` names the server in error messages ("the registry at …", a
    member's name); ``host`` is sent as ``Host`` unless a request brings one.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        name: str,
        host: str,
        read_timeout: float = READ_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        receive_size: int = RECEIVE_SIZE,
    ) -> None:
        self.stream = stream
        self.name = name
        self._host = host
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._receive_size = receive_size
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self._head: Head | None = None
        self._closed_by_server = False
        #: Whether any byte of the current answer arrived.
        self._answered = False
        #: A body was handed over (``detach_body``): h11 no longer knows where the stream is.
        self._detached = False

    @property
    def reusable(self) -> bool:
        """Between requests: fresh, or the last exchange completed on both sides."""
        states = (self._h11.our_state, self._h11.their_state)
        return not self._detached and states in ((h11.IDLE, h11.IDLE), (h11.DONE, h11.DONE))

    def detach_body(self) -> list[bytes]:
        """Hand the current answer's body over to a caller who reads it from ``stream``.

        Returns what h11 had buffered of it; the rest is still in the stream.
        Only for a body framed by Content-Length longer than what one read
        brings (the caller reads exactly the rest).  The connection cannot be
        reused afterwards.
        """
        buffered: list[bytes] = []
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise HttpClientError(f"{self.name} spoke bad HTTP: {exc}") from None
            if event is h11.NEED_DATA:
                break
            if not isinstance(event, h11.Data):
                raise HttpClientError(f"unexpected answer from {self.name}: {event!r}")
            buffered.append(event.data)
        self._detached = True
        return buffered

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)

    async def request(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Head:
        """Send a request and read the answer's head; read its body with ``body()``."""
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
        self._head = None
        items = list(headers.items() if isinstance(headers, Mapping) else headers)
        names = {name.lower() for name, _ in items}
        fields = [] if "host" in names else [("Host", self._host)]
        fields += items
        if (body or method in _WITH_BODY) and "content-length" not in names:
            fields.append(("Content-Length", str(len(body))))
        try:
            data = self._h11.send(h11.Request(method=method, target=target, headers=fields))
            if body:
                data += self._h11.send(h11.Data(data=body)) or b""
            data += self._h11.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as exc:
            raise HttpClientError(f"cannot send this request to {self.name}: {exc}") from None
        try:
            with trio.fail_after(self._write_timeout):
                await self.stream.send_all(data)
        except trio.TooSlowError:
            raise HttpClientError(f"{self.name} stopped reading our request") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ClosedWithoutAnswer(f"{self.name}: {error_reason(exc)}") from None
        self._answered = False
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Response):
                fields_in = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers]
                reason = event.reason.decode("latin-1")
                self._head = Head(event.status_code, fields_in, reason)
                return self._head
            if isinstance(event, h11.ConnectionClosed):  # (h11 raises instead, as it is)
                raise ClosedWithoutAnswer(f"{self.name} closed the connection without answering")
            if not isinstance(event, h11.InformationalResponse):
                raise HttpClientError(f"unexpected answer from {self.name}: {event!r}")

    async def body_chunks(self) -> AsyncIterator[bytes]:
        """The answer's body, as it arrives."""
        while (chunk := await self._next_chunk()) is not None:
            yield chunk

    async def body(self, limit: int) -> bytes:
        """The whole body; AnswerTooLarge past ``limit`` bytes (before reading them
        when ``Content-Length`` says so)."""
        length = self._head.header("content-length") if self._head is not None else None
        if length is not None and length.isdigit() and int(length) > limit:
            raise AnswerTooLarge(self.name, limit)
        pieces, size = [], 0
        while (chunk := await self._next_chunk()) is not None:
            size += len(chunk)
            if size > limit:
                raise AnswerTooLarge(self.name, limit)
            pieces.append(chunk)
        return b"".join(pieces)

    async def _next_chunk(self) -> bytes | None:
        """The next piece of the body, None at its end."""
        event = await self._next_event()
        if isinstance(event, h11.Data):
            # A fresh buffer h11 no longer holds: no copy needed.
            return event.data
        if isinstance(event, h11.EndOfMessage):
            return None
        raise HttpClientError(f"{self.name} closed the connection mid-answer")

    async def _next_event(self) -> Any:
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                if not self._closed_by_server:
                    raise HttpClientError(f"{self.name} spoke bad HTTP: {exc}") from None
                # h11's words for a close before the end of the answer.
                if not self._answered:
                    raise ClosedWithoutAnswer(
                        f"{self.name} closed the connection without answering"
                    ) from None
                when = "without answering" if self._head is None else "mid-answer"
                raise HttpClientError(f"{self.name} closed the connection {when}") from None
            if event is not h11.NEED_DATA:
                return event
            try:
                with trio.fail_after(self._read_timeout):
                    data = await self.stream.receive_some(self._receive_size)
            except trio.TooSlowError:
                raise HttpClientError(
                    f"{self.name} sent nothing for {self._read_timeout:g} s"
                ) from None
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                kind = HttpClientError if self._answered else ClosedWithoutAnswer
                raise kind(f"{self.name}: {error_reason(exc)}") from None
            self._closed_by_server = not data
            self._answered = self._answered or bool(data)
            # h11 takes any bytes-like object (a stream may hand over a bytearray).
            self._h11.receive_data(cast(bytes, data))
