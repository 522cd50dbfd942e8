"""The control socket: JSON-RPC 2.0 over a Unix stream socket, one object per line.

A method is ``async (params, notify) -> result``; ``notify(method, params)``
sends a notification to the calling connection while the call runs (e.g. a
fetch's progress, when the call asked for it).  Calls on one connection run
one after another, also the calls of a batch.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import socket as stdlib_socket
import stat
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from p2pcommon.boundary import contained, failure_boundary
from p2pcommon.http.connections import Connection, ConnectionTable
from p2pcommon.lifecycle import StartupError
from p2pd.control import jsonrpc
from p2pd.control.jsonrpc import RpcError

log = logging.getLogger("p2pd.control")

Notify = Callable[[str, dict[str, Any]], Awaitable[None]]
#: A part of an answer line: encoded here, or JSON kept elsewhere (jsonrpc.RawJson).
Piece = bytes | bytearray | memoryview
Method = Callable[[dict[str, Any], Notify], Awaitable[Any]]
MAX_CONNECTIONS = 64
#: Seconds a client may stay connected without sending a call.
IDLE_TIMEOUT = 60.0
#: Seconds one answer may wait for a client that stopped reading.
SEND_TIMEOUT = 10.0

_TOO_MANY = jsonrpc.error(
    None,
    jsonrpc.OPERATION_FAILED,
    f"p2pd is busy with {MAX_CONNECTIONS} control clients; retry in a moment",
)


async def _send(stream: trio.abc.Stream, data: bytes) -> None:
    with trio.fail_after(SEND_TIMEOUT):
        await stream.send_all(data)


class ControlSocketInUse(StartupError):
    """The control socket's path is taken by a live daemon or by something else."""


def _prepare_path(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlSocketInUse(
            f"control_socket {path} exists and is not a socket: remove it or set another path"
        )
    probe = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ControlSocketInUse(
                f"cannot check control_socket {path}: {exc.strerror}"
            ) from None
        path.unlink(missing_ok=True)  # stale: left by a daemon that died
    else:
        raise ControlSocketInUse(
            f"another p2pd is running on {path}: stop it first (sudo systemctl stop p2pd), "
            "or give this one another control_socket"
        )
    finally:
        probe.close()


class ControlServer:
    def __init__(
        self, socket_path: Path, methods: Mapping[str, Method], *, group: str | None = "p2pd"
    ) -> None:
        self.socket_path = socket_path
        self._methods = methods
        self._group = group
        # One address for all (a Unix socket): the idlest client makes room.
        self._clients = ConnectionTable(MAX_CONNECTIONS, MAX_CONNECTIONS)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        path = self.socket_path
        _prepare_path(path)
        sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
        await sock.bind(str(path))
        inode = path.stat().st_ino
        try:
            os.chmod(path, 0o660)
            self._give_to_group(path)
            sock.listen(2 * MAX_CONNECTIONS)
            task_status.started()
            await trio.serve_listeners(self._serve, [trio.SocketListener(sock)])
        finally:
            # Remove the socket only if it is still ours.
            with contextlib.suppress(OSError):
                if path.stat().st_ino == inode:
                    path.unlink()

    def _give_to_group(self, path: Path) -> None:
        if self._group is None:
            return
        try:
            gid = grp.getgrnam(self._group).gr_gid
            # Under systemd (Group=p2pd) it is ours already, and chown is
            # outside the unit's system-call filter.
            if path.stat().st_gid != gid:
                os.chown(path, -1, gid)
        except (KeyError, PermissionError):
            pass  # no such group, or not ours to give: root and the owner still may connect

    async def _serve(self, stream: trio.SocketStream) -> None:
        """One control client, inside its own failure boundary: never ends the daemon."""
        client = Connection(trio.CancelScope(), "unix", idle_since=trio.current_time())
        try:
            with failure_boundary("control client", "a control client", log):
                # Inside the boundary, so that it never sees them: a client that
                # goes away (Ctrl-C on a waiting fetch, kill) or stops reading is
                # how clients end, not a failure to log or count.
                try:
                    if not self._clients.admit(client):
                        await _send(stream, _TOO_MANY)
                        return
                    with client.scope:
                        await self._converse(stream, client)
                except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                    log.debug("a control client went away during its call")
        finally:
            self._clients.discard(client)
            await trio.aclose_forcefully(stream)

    async def _converse(self, stream: trio.SocketStream, client: Connection) -> None:
        lines = jsonrpc.LineBuffer()
        while True:
            client.idle, client.idle_since = True, trio.current_time()
            data = b""
            with trio.move_on_after(IDLE_TIMEOUT):
                data = await stream.receive_some(65536)
            if not data:
                return  # closed by the client, or idle too long
            client.idle = False
            try:
                calls = lines.feed(data)
            except jsonrpc.LineTooLong as exc:
                await _send(stream, jsonrpc.error(None, jsonrpc.INVALID_REQUEST, str(exc)))
                return
            for line in calls:
                answer = await self._answer(line, stream)
                if answer:
                    await _send(stream, answer)

    async def _answer(self, line: bytes, stream: trio.SocketStream) -> bytes:
        """The line to send back for one line received; b"" when nothing is owed."""
        try:
            parsed = jsonrpc.parse_line(line)
        except RpcError as exc:
            return jsonrpc.error(exc.call_id, exc.code, exc.message)

        async def notify(name: str, params: dict[str, Any]) -> None:
            await _send(stream, jsonrpc.notification(name, params))

        if isinstance(parsed, jsonrpc.Call):
            answer = await self._dispatch(parsed, notify, jsonrpc.MAX_ANSWER)
            return b"" if answer is None else b"".join([*answer, b"\n"])
        # A batch: its calls run one after another, as calls on a connection
        # do; its answers go back together, in one array, only for calls with
        # an id (and for items that were not calls at all).  They share one
        # line, and so one budget: a call whose answer would pass what is left
        # of it (minus the room kept for the short errors of all its calls)
        # gets the error "answer too large" instead.  The room is kept once for
        # the whole batch, not given back call by call, so what a call may use
        # only shrinks: the answers that fit are the first ones, and a call
        # like one refused before it is refused too.
        pieces: list[Piece] = [b"["]
        left = jsonrpc.MAX_ANSWER - 2
        kept = sum(_room(item) for item in parsed)
        for item in parsed:
            if isinstance(item, RpcError):
                error = jsonrpc.error_message(item.call_id, item.code, item.message)
                encoded: list[Piece] | None = [jsonrpc.compact(error)]
            else:
                encoded = await self._dispatch(item, notify, left - kept)
            if encoded is not None:
                if len(pieces) > 1:
                    pieces.append(b",")
                pieces += encoded
                left -= sum(map(len, encoded)) + 1
        # A batch of notifications only is owed no answer at all, not "[]".
        return b"".join([*pieces, b"]\n"]) if len(pieces) > 1 else b""

    async def _dispatch(
        self, call: jsonrpc.Call, notify: Notify, budget: int
    ) -> list[Piece] | None:
        """The encoded answer to one call, in pieces, within ``budget`` bytes; None for a
        notification.  Pieces, so that a batch's line is joined once, not twice."""
        method = self._methods.get(call.method)
        if method is None:
            error = jsonrpc.error_message(
                call.id, jsonrpc.METHOD_NOT_FOUND, f"no method {call.method[:100]!r}"
            )
            return None if call.notification else [jsonrpc.compact(error)]
        try:
            value = await method(call.params, notify)
            if call.notification:
                return None
            return await _encoded(call, value, budget)
        except RpcError as exc:
            answer = jsonrpc.error_message(call.id, exc.code, exc.message, exc.data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            raise  # the client is gone: nobody to answer
        except Exception as exc:
            contained("control method", exc, f"control method {call.method}", log)
            answer = jsonrpc.error_message(
                call.id, jsonrpc.INTERNAL_ERROR, "internal error: see the log"
            )
        if call.notification:
            return None
        encoded = jsonrpc.compact(answer)
        return [encoded if len(encoded) <= budget else _too_large(call)]


#: Room kept in a batch's line for each call's error answer, besides its id.
ERROR_ROOM = 512


def _room(item: jsonrpc.Call | RpcError) -> int:
    call_id = item.call_id if isinstance(item, RpcError) else item.id
    return ERROR_ROOM + len(jsonrpc.compact(call_id))


def _too_large(call: jsonrpc.Call) -> bytes:
    limit = jsonrpc.MAX_ANSWER // 2**20
    message = (
        f"answer too large: {call.method[:40]!r} would pass the {limit} MiB that one answer "
        "line holds (a batch's answers share it): ask for it in a call of its own"
    )
    return jsonrpc.compact(jsonrpc.error_message(call.id, jsonrpc.INTERNAL_ERROR, message))


async def _encoded(call: jsonrpc.Call, value: Any, budget: int) -> list[Piece]:
    """The result's answer, encoded a slice at a time with the event loop running
    in between; "answer too large" instead as soon as it passes ``budget``."""
    pieces: list[Piece] = []
    size = 0
    for piece in jsonrpc.result_pieces(call.id, value):
        size += len(piece)
        if size > budget:
            return [_too_large(call)]
        pieces.append(piece)
        await trio.lowlevel.checkpoint()
    return pieces
