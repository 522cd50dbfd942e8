"""Sending an answer: h11 frames it, these functions put it on the stream.

A body goes out with its head when it is small and read already, by itself
when it can (``Body.send_itself``: worker threads, for large files), else
piece by piece; every write has a deadline, and a streamed body is closed
whether or not it was sent (it may hold an upload slot).
"""

from __future__ import annotations

import contextlib
import time

import h11
import trio

from p2pcommon.http.events import Body, Response
from p2pcommon.http.head import checked_fields, http_date, phrase

#: Bodies larger than this are sent after the head instead of joined to it.
JOIN_LIMIT = 64 * 1024
#: A lingering close (``linger_close``): seconds, and bytes read from the client meanwhile.
LINGER = 1.0
LINGER_DRAIN = 64 * 1024


async def send_response(
    stream: trio.abc.Stream,
    h11conn: h11.Connection,
    response: Response,
    *,
    send_timeout: float,
    head_only: bool = False,
) -> None:
    """Send ``response``; only its head (with the body's length) for a HEAD request.

    Each write must be taken within ``send_timeout`` (TooSlowError).
    """
    out = _DeadlineStream(stream, send_timeout)
    length = response.length if response.stream is not None else len(response.body)
    headers = list(response.headers)
    # 204 and 304 have no content (RFC 9110 §15.3.5, §15.4.5): a 204 must
    # not carry Content-Length, and a 304's would describe the selected
    # representation, so "0" would be a lie.  h11 frames both as empty.
    if response.status not in (204, 304):
        headers.append(("Content-Length", str(length)))
    if not any(name.lower() == "date" for name, _ in response.headers):
        headers.append(("Date", http_date(time.time())))
    try:
        event = h11.Response(
            status_code=int(response.status),
            headers=checked_fields(headers),
            reason=phrase(response.status),
            # Checked above as h11 would, for a fraction of h11's cost per answer.
            _parsed=True,
        )
        head = h11conn.send(event)
    except BaseException:
        await _close_body(response)
        raise
    assert head is not None
    if head_only:
        try:
            tail = h11conn.send(h11.EndOfMessage())
            assert tail is not None
            await out.send_all(head + tail)
        finally:
            await _close_body(response)
        return
    if response.stream is not None:
        await _send_stream(stream, out, h11conn, response, response.stream, head, send_timeout)
        return
    body = h11conn.send(h11.Data(data=response.body)) if response.body else b""
    tail = h11conn.send(h11.EndOfMessage())
    assert body is not None and tail is not None
    if len(response.body) <= JOIN_LIMIT:
        await out.send_all(head + body + tail)
    else:
        await out.send_all(head)
        await out.send_all(body)
        await out.send_all(tail)


async def _send_stream(
    stream: trio.abc.Stream,
    out: _DeadlineStream,
    h11conn: h11.Connection,
    response: Response,
    body: Body,
    head: bytes,
    send_timeout: float,
) -> None:
    """A streamed body: with the head if it is small and read already; by the
    body itself if it can (``send_itself``: worker threads); else piece by piece."""
    sent_itself = False
    try:
        if response.length <= JOIN_LIMIT and body.in_memory:
            # Bytes read already go out with the head: one write, and one
            # wake-up of the client instead of two.
            joined = [head]
            async for chunk in body:
                joined += h11conn.send_with_data_passthrough(h11.Data(data=chunk)) or ()
            joined.append(h11conn.send(h11.EndOfMessage()) or b"")
            await out.send_all(b"".join(joined))
            return
        await out.send_all(head)
        sent_itself = await body.send_itself(stream, send_timeout)
        if not sent_itself:
            async for chunk in body:
                # Content-Length framing adds nothing around the data: send it uncopied.
                pieces = h11conn.send_with_data_passthrough(h11.Data(data=chunk))
                for piece in pieces or ():
                    await out.send_all(piece)
    finally:
        await _close_body(response)
    if sent_itself:
        # h11 did not see the body, so the connection ends (the answer said
        # so); closing with the client's bytes unread would send an RST,
        # which can destroy the end of the body before the client reads it.
        await linger_close(stream)
        return
    tail = h11conn.send(h11.EndOfMessage())
    assert tail is not None
    if tail:
        await out.send_all(tail)


async def linger_close(
    stream: trio.abc.Stream, linger: float = LINGER, drain: int = LINGER_DRAIN
) -> None:
    """Our FIN, then the client's bytes read (and dropped) until it closes: at most
    ``linger`` seconds and ``drain`` bytes.  The caller closes the stream after."""
    transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if not isinstance(transport, trio.abc.HalfCloseableStream):
        return
    with (
        trio.move_on_after(linger),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
    ):
        await transport.send_eof()
        drained = 0
        while drained < drain:
            data = await transport.receive_some(drain)
            if not data:
                break
            drained += len(data)


async def _close_body(response: Response) -> None:
    """Close a streamed body (and what it holds, e.g. an upload slot), sent or not."""
    if response.stream is not None:
        with trio.CancelScope(shield=True):
            await response.stream.aclose()


class _DeadlineStream:
    """``send_all`` that fails with TooSlowError when the client stops reading."""

    def __init__(self, stream: trio.abc.Stream, timeout: float) -> None:
        self._stream = stream
        self._timeout = timeout

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        # trio.fail_after's generator-based context manager was a measurable
        # part of every registry answer; this is what it does.
        with trio.move_on_after(self._timeout) as scope:
            await self._stream.send_all(data)
        if scope.cancelled_caught:
            raise trio.TooSlowError
