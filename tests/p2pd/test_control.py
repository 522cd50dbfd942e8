"""JSON-RPC framing (pure) and the control socket (a real Unix socket)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from p2pd import jsonrpc
from p2pd.control import ControlServer, ControlSocketInUse, Notify
from p2pd.jsonrpc import LineBuffer, LineTooLong, RpcError, parse_call


def test_a_call_round_trips_through_the_framing() -> None:
    buffer = LineBuffer()
    wire = jsonrpc.request(7, "ls", {"peer": "bob"})
    (line,) = buffer.feed(wire[:5]) + buffer.feed(wire[5:])
    call = parse_call(line)
    assert (call.id, call.method, call.params, call.notification) == (
        7,
        "ls",
        {"peer": "bob"},
        False,
    )
    answer = json.loads(jsonrpc.result(call.id, [1]))
    assert answer == {"jsonrpc": "2.0", "id": 7, "result": [1]}


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"{nope", -32700),
        (b"[]", -32600),
        (b'"text"', -32600),
        (b'{"jsonrpc": "1.0", "id": 1, "method": "x"}', -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": 5}', -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "x", "params": ["a"]}', -32602),
        (b'{"jsonrpc": "2.0", "id": {}, "method": "x"}', -32600),
    ],
)
def test_malformed_calls_get_their_error_codes(line: bytes, code: int) -> None:
    with pytest.raises(RpcError) as caught:
        parse_call(line)
    assert caught.value.code == code


def test_overlong_lines_are_refused_not_buffered() -> None:
    buffer = LineBuffer(limit=100)
    with pytest.raises(LineTooLong):
        buffer.feed(b"x" * 101)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_the_parser(data: bytes) -> None:
    for line in LineBuffer().feed(data + b"\n"):
        with contextlib.suppress(RpcError):
            parse_call(line)


@pytest.fixture
def socket_path() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="ctl-", dir="/tmp"))
    yield folder / "run" / "control.sock"
    shutil.rmtree(folder, ignore_errors=True)


async def echo(params: dict[str, Any], notify: Notify) -> Any:
    return params


async def slow(params: dict[str, Any], notify: Notify) -> Any:
    for step in range(3):
        await notify("progress", {"step": step})
    return "done"


async def broken(params: dict[str, Any], notify: Notify) -> Any:
    raise ValueError("a bug")


async def refuse(params: dict[str, Any], notify: Notify) -> Any:
    raise RpcError(1, "no member named 'x'", {"candidates": []})


async def exchange(path: Path, lines: list[bytes], answers: int) -> list[dict[str, Any]]:
    stream = await trio.open_unix_socket(str(path))
    async with stream:
        await stream.send_all(b"".join(lines))
        got: list[dict[str, Any]] = []
        buffer = LineBuffer()
        while len(got) < answers:
            data = await stream.receive_some(65536)
            assert data, "the server closed the connection"
            got += [json.loads(line) for line in buffer.feed(data)]
        return got


async def test_errors_are_answered_and_the_connection_survives(socket_path: Path) -> None:
    server = ControlServer(
        socket_path, {"echo": echo, "slow": slow, "broken": broken, "refuse": refuse}
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        assert stat.S_IMODE((await trio.Path(socket_path).stat()).st_mode) == 0o660
        answers = await exchange(
            socket_path,
            [
                b"{not json\n",
                jsonrpc.request(1, "nope", {}),
                jsonrpc.request(2, "broken", {}),
                jsonrpc.request(3, "refuse", {}),
                jsonrpc.request(4, "slow", {}),
                jsonrpc.request(5, "echo", {"a": 1}),
            ],
            answers=9,
        )
        assert answers[0]["error"]["code"] == -32700
        assert answers[1]["error"]["code"] == -32601
        assert answers[2]["error"]["code"] == -32603
        assert answers[3]["error"] == {
            "code": 1,
            "message": "no member named 'x'",
            "data": {"candidates": []},
        }
        assert [a["params"]["step"] for a in answers[4:7]] == [0, 1, 2]
        assert answers[7] == {"jsonrpc": "2.0", "id": 4, "result": "done"}
        assert answers[8] == {"jsonrpc": "2.0", "id": 5, "result": {"a": 1}}
        nursery.cancel_scope.cancel()
    assert not await trio.Path(socket_path).exists()


async def test_stale_socket_is_replaced(socket_path: Path) -> None:
    socket_path.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(socket_path))
    stale.close()  # the file stays, nobody listens: a daemon that was killed
    server = ControlServer(socket_path, {"echo": echo})
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        (answer,) = await exchange(socket_path, [jsonrpc.request(1, "echo", {})], answers=1)
        assert answer["result"] == {}
        nursery.cancel_scope.cancel()


async def test_a_live_daemon_on_the_socket_is_not_displaced(socket_path: Path) -> None:
    first = ControlServer(socket_path, {"echo": echo})
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        with pytest.raises(ControlSocketInUse, match="another p2pd is running"):
            await ControlServer(socket_path, {}).run()
        (answer,) = await exchange(socket_path, [jsonrpc.request(1, "echo", {})], answers=1)
        assert answer["id"] == 1
        nursery.cancel_scope.cancel()


async def test_a_path_that_is_not_a_socket_is_refused(socket_path: Path) -> None:
    path = trio.Path(socket_path)
    await path.parent.mkdir(parents=True)
    await path.write_text("a user's file")
    with pytest.raises(ControlSocketInUse, match="is not a socket"):
        await ControlServer(socket_path, {}).run()
    assert await path.read_text() == "a user's file"


# -- staying up: deep nesting, strange text, clients that vanish or idle ---------


@pytest.mark.parametrize("line", [b"[" * 5000, b'{"a":' * 5000, b"[" * 100 + b"]" * 100])
def test_deep_nesting_is_a_parse_error_not_a_recursion(line: bytes) -> None:
    with pytest.raises(RpcError) as caught:
        parse_call(line)
    assert caught.value.code == -32700


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    params = {"path": "[" * 100 + '\\"{' * 50}
    call = parse_call(jsonrpc.request(1, "ls", params))
    assert call.params == params


def test_any_text_encodes_even_a_lone_surrogate_from_a_file_name() -> None:
    line = jsonrpc.result(1, [{"path": "caf\udce9.txt"}])
    assert json.loads(line)["result"] == [{"path": "caf\udce9.txt"}]


async def forever(params: dict[str, Any], notify: Notify) -> Any:
    while True:
        await notify("progress", {"padding": "x" * 4096})
        await trio.sleep(0.01)


async def test_a_client_that_vanishes_mid_call_ends_only_its_call(socket_path: Path) -> None:
    server = ControlServer(socket_path, {"forever": forever, "echo": echo})
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        for _ in range(3):  # as Ctrl-C or kill -9 of a waiting `p2pctl fetch`
            stream = await trio.open_unix_socket(str(socket_path))
            await stream.send_all(jsonrpc.request(1, "forever", {}))
            await stream.receive_some(100)
            sock = stream.socket
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            await stream.aclose()
        # A client that asks and closes before reading the answer.
        stream = await trio.open_unix_socket(str(socket_path))
        await stream.send_all(jsonrpc.request(2, "echo", {"x": 1}))
        await stream.aclose()
        answers = await exchange(socket_path, [jsonrpc.request(3, "echo", {"ok": 1})], answers=1)
        assert answers[0]["result"] == {"ok": 1}
        nursery.cancel_scope.cancel()


async def test_idle_clients_make_room_so_a_call_never_hangs(socket_path: Path) -> None:
    server = ControlServer(socket_path, {"echo": echo})
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        idle = [await trio.open_unix_socket(str(socket_path)) for _ in range(100)]
        with trio.fail_after(10):
            answers = await exchange(socket_path, [jsonrpc.request(1, "echo", {"a": 1})], 1)
        assert answers[0]["result"] == {"a": 1}
        for stream in idle:
            await stream.aclose()
        nursery.cancel_scope.cancel()
