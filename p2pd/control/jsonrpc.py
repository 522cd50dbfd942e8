"""JSON-RPC 2.0 framing for the control socket: one message per line. Pure, no I/O.

A line holds one call (an object) or a batch (an array of calls), as the
JSON-RPC 2.0 specification defines them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
#: Application errors: the daemon refused or the operation failed.
OPERATION_FAILED = 1

MAX_LINE = 1024 * 1024
#: Nesting of arrays and objects in a call; no method takes more than a few.
#: A batch's array adds one level on top.
MAX_DEPTH = 32
#: Calls in one batch: a line of a million tiny invalid calls must not become
#: a million error answers held in memory at once.
MAX_BATCH = 100
#: The longest answer line, a batch's answers together: past it a call's result
#: is replaced by an "answer too large" error (a batch of 100 listings of a
#: large share must not become a GiB in memory).
MAX_ANSWER = 64 * 1024 * 1024
#: Items of a list result encoded at a time: between them the event loop runs.
ENCODE_SLICE = 2000
_OPENERS = re.compile(rb"[\[{]")
_COMPACT = (",", ":")


class RpcError(Exception):
    def __init__(
        self, code: int, message: str, data: Any = None, *, call_id: int | str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        #: The id of the call it answers, when the call got that far.
        self.call_id = call_id


class LineTooLong(Exception):
    pass


class LineBuffer:
    """Splits a byte stream into lines, refusing to buffer more than ``MAX_LINE``."""

    def __init__(self, limit: int = MAX_LINE) -> None:
        self._pending = bytearray()
        self._limit = limit

    def feed(self, data: bytes) -> list[bytes]:
        self._pending += data
        *lines, rest = self._pending.split(b"\n")
        self._pending = bytearray(rest)
        if len(self._pending) > self._limit:
            raise LineTooLong(f"a request line is longer than {self._limit} bytes")
        return [bytes(line) for line in lines if line.strip()]


@dataclass(frozen=True)
class Call:
    id: int | str | None
    method: str
    params: dict[str, Any]
    notification: bool


#: One line: a call, or a batch whose items are calls or the error of an item.
Batch = list[Call | RpcError]


@dataclass(frozen=True)
class RawJson:
    """A result that is JSON already (compact, non-ASCII escaped), sent as it is:
    e.g. a listing kept as bytes, which would otherwise be decoded to be encoded."""

    data: bytes | bytearray | memoryview


def encode(message: dict[str, Any] | list[dict[str, Any]]) -> bytes:
    """One answer (or a batch's list of answers) as one line."""
    return compact(message) + b"\n"


def compact(value: Any) -> bytes:
    # ASCII escapes: any str, even one holding a lone surrogate from a strange
    # file name, encodes; every JSON reader decodes it back.
    return json.dumps(value, separators=_COMPACT).encode()


def result_pieces(
    call_id: int | str | None, value: Any
) -> Iterator[bytes | bytearray | memoryview]:
    """The answer ``result_message`` would encode, in pieces of bounded work each.

    A long list goes ENCODE_SLICE items at a time and RawJson as it is, so that
    whoever joins the pieces can let the event loop run between them and stop
    once they pass a budget, instead of building a huge answer in one call.
    """
    yield b'{"jsonrpc":"2.0","id":' + compact(call_id) + b',"result":'
    if isinstance(value, RawJson):
        yield value.data
    elif isinstance(value, list) and len(value) > ENCODE_SLICE:
        yield b"["
        for start in range(0, len(value), ENCODE_SLICE):
            items = compact(value[start : start + ENCODE_SLICE])[1:-1]
            yield b"," + items if start else items
        yield b"]"
    else:
        yield compact(value)
    yield b"}"


def result_message(call_id: int | str | None, value: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": call_id, "result": value}


def error_message(
    call_id: int | str | None, code: int, message: str, data: Any = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        body["data"] = data
    return {"jsonrpc": "2.0", "id": call_id, "error": body}


def result(call_id: int | str | None, value: Any) -> bytes:
    return encode(result_message(call_id, value))


def error(call_id: int | str | None, code: int, message: str, data: Any = None) -> bytes:
    return encode(error_message(call_id, code, message, data))


def notification(method: str, params: dict[str, Any]) -> bytes:
    return encode({"jsonrpc": "2.0", "method": method, "params": params})


def request(call_id: int | str, method: str, params: dict[str, Any]) -> bytes:
    return encode({"jsonrpc": "2.0", "id": call_id, "method": method, "params": params})


def parse_line(line: bytes) -> Call | Batch:
    """The call, or the batch, on one line.

    RpcError (with the id when known) when the line as a whole is refused:
    not JSON, too deep, an empty or too long batch, or a single malformed call.
    In a batch, a malformed item becomes that item's RpcError instead, so that
    the other calls still run.
    """
    # A batch's array is one level more than its calls may use themselves.
    batch = line.lstrip()[:1] == b"["
    if _too_deep(line, MAX_DEPTH + 1 if batch else MAX_DEPTH):
        raise RpcError(PARSE_ERROR, f"parse error: nested deeper than {MAX_DEPTH} levels")
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise RpcError(PARSE_ERROR, "parse error: not valid JSON") from None
    if not isinstance(message, list):
        return call_of(message)
    if not message:
        raise RpcError(INVALID_REQUEST, "an empty batch: send at least one call")
    if len(message) > MAX_BATCH:
        raise RpcError(INVALID_REQUEST, f"a batch holds at most {MAX_BATCH} calls")
    items: Batch = []
    for item in message:
        try:
            items.append(call_of(item))
        except RpcError as exc:
            items.append(exc)
    return items


def call_of(message: Any) -> Call:
    """The call in one decoded message; RpcError (with the id when known) if malformed."""
    if not isinstance(message, dict):
        raise RpcError(INVALID_REQUEST, "a call must be a JSON object")
    call_id = message.get("id")
    if call_id is not None and (isinstance(call_id, bool) or not isinstance(call_id, int | str)):
        raise RpcError(INVALID_REQUEST, "id must be a string or an integer")
    method = message.get("method")
    if message.get("jsonrpc") != "2.0" or not isinstance(method, str):
        raise RpcError(
            INVALID_REQUEST, 'a call needs "jsonrpc": "2.0" and a string "method"', call_id=call_id
        )
    params = message.get("params", {})
    # The specification: params, when present, is a structured value (an
    # object or an array); null, a string or a number make the call invalid.
    if not isinstance(params, dict | list):
        raise RpcError(
            INVALID_REQUEST, "params must be an object of named parameters", call_id=call_id
        )
    if isinstance(params, list) and not params:
        params = {}
    if not isinstance(params, dict):
        # A structured value, just not one these methods take: all params are named.
        raise RpcError(
            INVALID_PARAMS, "params must be an object of named parameters", call_id=call_id
        )
    for name, value in params.items():
        if not _is_text(name) or not _is_text(value):
            raise RpcError(
                INVALID_PARAMS,
                f"param {name!r} is not valid Unicode text (it holds a lone surrogate "
                "such as \\ud800): send names and paths as UTF-8 text",
                call_id=call_id,
            )
    return Call(call_id, method, params, notification="id" not in message)


def _is_text(value: Any) -> bool:
    """Whether every string in ``value`` (at any depth) is valid Unicode text.

    JSON may spell a lone surrogate (``"\\ud800"``), which no file name, no
    SQLite text and no UTF-8 output can carry: refused here, once, for every
    method, rather than failing deep inside one.  The depth is bounded by
    MAX_DEPTH (checked before parsing).
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_is_text(k) and _is_text(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_is_text(item) for item in value)
    return True


def _too_deep(line: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether brackets nest deeper than ``limit`` (counted outside strings), before parsing.

    A cheap pre-check keeps the parser's recursion bounded: a few thousand
    ``[`` would otherwise raise RecursionError deep inside json.
    """
    if len(_OPENERS.findall(line, 0, MAX_LINE)) <= limit:
        return False
    depth = 0
    in_string = escaped = False
    for byte in line:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False
