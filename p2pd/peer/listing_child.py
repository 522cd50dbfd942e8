"""Checking a large listing in a child process, ``python -m p2pd.peer.listing``.

pydantic validates a body in one call that holds the interpreter's lock:
for tens of MiB, seconds during which no other thread of the daemon (its
event loop: the control socket, the peer server, the watchdog) may run.  A
child has a lock of its own, and the memory of the parse (several times the
body's size) is gone with it.  It answers the listing in its kept form
(p2pd.peer.listing.child_output), read here straight into its final buffer.
"""

from __future__ import annotations

import subprocess
import sys
from array import array
from functools import partial

import trio

from p2pcommon.models import MAX_LISTED_FILES
from p2pd.peer.listing import INVALID_STATUS, MemberListing

#: The kept form is about the body's size; JSON escapes may make it larger.
MAX_OUTPUT = 256 * 1024 * 1024
#: What is kept of the child's stderr (its one-line reason, or a traceback).
MAX_STDERR = 4096
_HEADER_MAX = 64


class ChildOutputError(Exception):
    """The child failed otherwise than by finding the body invalid (killed, out of memory)."""


class InvalidBody(Exception):
    """The body is not a valid listing; the message is the first problem."""


async def check_in_child(body: bytes) -> MemberListing:
    """The body's listing, checked by a child; InvalidBody if it is not one.

    ChildOutputError when the child failed otherwise (killed, out of memory,
    an answer of the wrong shape).  Cancelling kills the child.
    """
    errors = bytearray()
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                [sys.executable, "-m", "p2pd.peer.listing"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                check=False,
            )
        )
        assert process.stdin and process.stdout and process.stderr
        nursery.start_soon(_collect, process.stderr, errors)
        try:
            async with process.stdin:
                await process.stdin.send_all(body)
            listing: MemberListing | None = await _read_output(process.stdout)
        except (ChildOutputError, trio.BrokenResourceError):
            listing = None  # the child's status and stderr say what happened
            process.kill()
    said = errors.decode("utf-8", "replace").strip()
    if process.returncode == INVALID_STATUS:
        raise InvalidBody(said.splitlines()[0] if said else "invalid")
    if process.returncode != 0 or listing is None:
        last = said.splitlines()[-1] if said else "nothing on stderr"
        raise ChildOutputError(f"status {process.returncode}: {last}")
    return listing


async def _collect(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
    while chunk := await stream.receive_some(65536):
        into += chunk[: MAX_STDERR - len(into)]


async def _read_output(stream: trio.abc.ReceiveStream) -> MemberListing:
    """Header line, offsets, data: each read into its own buffer, no joining."""
    pending = bytearray()
    while b"\n" not in pending:
        chunk = await stream.receive_some(_HEADER_MAX)
        if not chunk or len(pending) > _HEADER_MAX:
            raise ChildOutputError("no header line")
        pending += chunk
    header, _, rest = bytes(pending).partition(b"\n")
    words = header.split()
    if len(words) != 2 or not all(word.isdigit() for word in words):
        raise ChildOutputError("no header line")
    generation, count = int(words[0]), int(words[1])
    if count > MAX_LISTED_FILES:
        raise ChildOutputError(f"{count} entries")
    raw = bytearray(8 * (count + 1))
    rest = await _fill(stream, raw, rest)
    offsets = array("Q", raw)
    if sys.byteorder != "little":
        offsets.byteswap()
    if offsets[-1] > MAX_OUTPUT:
        raise ChildOutputError(f"{offsets[-1]} bytes of data")
    data = bytearray(offsets[-1])
    if await _fill(stream, data, rest) or await stream.receive_some(1):
        raise ChildOutputError("more output than announced")
    if data[:1] != b"[" or (count and offsets[0] != 1):
        raise ChildOutputError("offsets that do not fit the data")
    return MemberListing(generation, data, offsets)


async def _fill(stream: trio.abc.ReceiveStream, buffer: bytearray, pending: bytes) -> bytes:
    """Fill ``buffer`` with ``pending`` then the stream; what was read past it."""
    view = memoryview(buffer)
    used = min(len(pending), len(buffer))
    view[:used] = pending[:used]
    rest = pending[used:]
    while used < len(buffer):
        chunk = await stream.receive_some(min(1 << 20, len(buffer) - used))
        if not chunk:
            raise ChildOutputError(f"output cut at {used} of {len(buffer)} bytes")
        view[used : used + len(chunk)] = chunk
        used += len(chunk)
    return rest
