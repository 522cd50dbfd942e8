"""What the HTTP server and its handlers pass each other: a request, an answer, a body.

As h11's ``_events.py`` and hypercorn's ``protocol/events.py`` do, these are
plain data with no I/O, in a module of their own: the server
(``p2pcommon.http.server``) reads requests into them, a handler answers with a
``Response``, and ``p2pcommon.http.send`` puts it on the stream.  A body too
large to hold, or one that holds something (a file, an upload slot), is a
``Body``: the sender asks it, by these names only, whether it is in memory
already, whether it sends itself, and closes it in the end.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import trio


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    client_host: str
    #: Who the transport authenticated (e.g. a TLS client certificate's peer id).
    client_id: str | None = None
    #: Requests the server was working on when this one reached the handler,
    #: itself included: those read, or being read, and not yet answered.  A
    #: handler sheds load on it (under overload the queue is here, in requests
    #: that arrived and wait for the CPU or the store).
    in_progress: int = 1

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: bytes) -> bytes | None:
        """The combined value of a header, by lowercase name (h11 lowercases names)."""
        values = [v for n, v in self.headers if n == name]
        return b", ".join(values) if values else None


class Body(Protocol):
    """A body produced while it is sent: ``length`` bytes (the ``Response``'s), in chunks.

    Derive from it to take the defaults (a body neither in memory nor able to
    send itself, holding nothing); ``__anext__`` is the body's own.
    """

    #: The whole body is read already: it may go out joined to the head, in one write.
    in_memory: bool = False

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def send_itself(self, stream: trio.abc.Stream, stall_limit: float) -> bool:
        """Send the whole body on ``stream`` by other means than its chunks (worker
        threads, say), each write taken within ``stall_limit`` seconds; False, having
        sent nothing, if it cannot: then its chunks are sent."""
        return False

    async def aclose(self) -> None:
        """Let go of what the body holds (an open file, an upload slot), sent or not."""
        return  # by default it holds nothing


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: A body too large to hold in memory: ``length`` bytes produced by ``stream``.
    stream: Body | None = None
    length: int = 0


def json_response(status: int, payload: Any, headers: Sequence[tuple[str, str]] = ()) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, body, [("Content-Type", "application/json"), *headers])


def error_response(
    status: int, error: str, message: str = "", headers: Sequence[tuple[str, str]] = ()
) -> Response:
    return json_response(status, {"error": error, "message": message}, headers)
