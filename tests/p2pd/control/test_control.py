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

from p2pd.control import jsonrpc
from p2pd.control.jsonrpc import (
    MAX_BATCH,
    MAX_DEPTH,
    Call,
    LineBuffer,
    LineTooLong,
    RpcError,
    parse_line,
)
from p2pd.control.server import ControlServer, ControlSocketInUse, Notify


def parse_call(line: bytes) -> Call:
    """The single call on a line (a test helper: the server takes batches too)."""
    parsed = parse_line(line)
    assert isinstance(parsed, Call), parsed
    return parsed


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
        # params, when present, must be a structured value (the specification).
        (b'{"jsonrpc": "2.0", "id": 1, "method": "x", "params": null}', -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "x", "params": "peer"}', -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "x", "params": 5}', -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "x", "params": true}', -32600),
    ],
)
def test_malformed_calls_get_their_error_codes(line: bytes, code: int) -> None:
    with pytest.raises(RpcError) as caught:
        parse_line(line)
    assert caught.value.code == code


def test_params_may_be_absent_an_empty_array_or_an_object() -> None:
    for params in (b"", b', "params": []', b', "params": {}'):
        call = parse_call(b'{"jsonrpc": "2.0", "id": 1, "method": "x"' + params + b"}")
        assert call.params == {}
    assert parse_call(jsonrpc.request(1, "x", {"a": 1})).params == {"a": 1}


def test_a_batch_parses_into_its_calls_and_the_errors_of_its_bad_items() -> None:
    line = (
        b'[{"jsonrpc": "2.0", "id": 1, "method": "a"}, 5,'
        b' {"jsonrpc": "2.0", "method": "b", "params": {"x": 1}},'
        b' {"jsonrpc": "2.0", "id": "z", "method": "c", "params": null}]'
    )
    parsed = parse_line(line)
    assert isinstance(parsed, list) and len(parsed) == 4
    first, bad, notice, null_params = parsed
    assert isinstance(first, Call) and (first.id, first.method) == (1, "a")
    assert isinstance(bad, RpcError) and (bad.code, bad.call_id) == (-32600, None)
    assert isinstance(notice, Call) and notice.notification and notice.params == {"x": 1}
    assert isinstance(null_params, RpcError)
    assert (null_params.code, null_params.call_id) == (-32600, "z")


@pytest.mark.parametrize("line", [b"[]", b" [ ] ", b"[" + b"1," * MAX_BATCH + b"1]"])
def test_an_empty_or_oversized_batch_is_one_invalid_request(line: bytes) -> None:
    with pytest.raises(RpcError) as caught:
        parse_line(line)
    assert (caught.value.code, caught.value.call_id) == (-32600, None)


def nested_call(depth: int) -> bytes:
    """A call whose own nesting (its object included) is ``depth`` levels."""
    inner = b"[" * (depth - 2) + b"]" * (depth - 2)
    return b'{"jsonrpc": "2.0", "id": 1, "method": "x", "params": {"a": ' + inner + b"}}"


def test_a_batch_may_add_one_level_of_nesting_and_no_more() -> None:
    assert parse_call(nested_call(MAX_DEPTH)).id == 1
    parsed = parse_line(b"[" + nested_call(MAX_DEPTH) + b"]")
    assert isinstance(parsed, list) and isinstance(parsed[0], Call)
    for line in (nested_call(MAX_DEPTH + 1), b"[" + nested_call(MAX_DEPTH + 1) + b"]"):
        with pytest.raises(RpcError) as caught:
            parse_line(line)
        assert caught.value.code == -32700


def test_overlong_lines_are_refused_not_buffered() -> None:
    buffer = LineBuffer(limit=100)
    with pytest.raises(LineTooLong):
        buffer.feed(b"x" * 101)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_the_parser(data: bytes) -> None:
    for line in LineBuffer().feed(data + b"\n"):
        with contextlib.suppress(RpcError):
            parse_line(line)


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


async def test_batches_are_answered_as_the_specification_says(socket_path: Path) -> None:
    server = ControlServer(socket_path, {"echo": echo, "slow": slow, "refuse": refuse})
    call = b'{"jsonrpc": "2.0", "id": %d, "method": "%s", "params": {"n": %d}}'
    notice = b'{"jsonrpc": "2.0", "method": "echo", "params": {}}'
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        batch = b",".join(
            [call % (1, b"echo", 1), notice, call % (2, b"refuse", 2), b"7", call % (3, b"nope", 3)]
        )
        lines = [
            b"[" + batch + b"]\n",
            # Only notifications: no answer at all (the next answer is id 4's).
            b"[" + notice + b"," + notice + b"]\n",
            b"[]\n",
            b"[" + call % (5, b"slow", 5) + b"]\n",
            jsonrpc.request(4, "echo", {"single": True}),
        ]
        answers = await exchange(socket_path, lines, answers=7)
        (batch_answer, empty, *progress, slow_answer, single) = answers
        assert isinstance(batch_answer, list)
        by_id = {a["id"]: a for a in batch_answer if a["id"] is not None}
        assert by_id[1]["result"] == {"n": 1}
        assert by_id[2]["error"]["code"] == 1
        assert by_id[3]["error"]["code"] == -32601
        assert [a["error"]["code"] for a in batch_answer if a["id"] is None] == [-32600]
        assert len(batch_answer) == 4  # nothing for the notification
        assert empty == {
            "jsonrpc": "2.0",
            "id": None,
            "error": {"code": -32600, "message": empty["error"]["message"]},
        }
        # A call in a batch may still notify; its answer comes in the batch's array.
        assert [p["params"]["step"] for p in progress] == [0, 1, 2]
        assert slow_answer == [{"jsonrpc": "2.0", "id": 5, "result": "done"}]
        assert single == {"jsonrpc": "2.0", "id": 4, "result": {"single": True}}
        nursery.cancel_scope.cancel()


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
        parse_line(line)
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


async def test_a_client_going_away_is_not_a_failure_to_log_or_count(
    socket_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from p2pcommon.boundary import failures

    noticed = trio.Event()

    async def progress_until_gone(params: dict[str, Any], notify: Notify) -> Any:
        try:
            while True:
                await notify("progress", {"padding": "x" * 4096})
                await trio.sleep(0.01)
        finally:
            noticed.set()

    before = dict(failures)
    server = ControlServer(socket_path, {"fetch": progress_until_gone})
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        stream = await trio.open_unix_socket(str(socket_path))
        await stream.send_all(jsonrpc.request(1, "fetch", {}))
        await stream.receive_some(100)
        await stream.aclose()  # as Ctrl-C on a waiting `p2pctl fetch` does
        await noticed.wait()
        nursery.cancel_scope.cancel()
    assert dict(failures) == before
    assert [r for r in caplog.records if r.levelname in ("ERROR", "WARNING")] == []


@pytest.mark.parametrize(
    "value",
    [
        [],
        [{"path": f"é/{i}", "size": i} for i in range(jsonrpc.ENCODE_SLICE * 2 + 7)],
        {"a": [1, 2]},
        "text \udcff",
        None,
    ],
)
def test_an_answer_in_pieces_is_the_answer_encoded_at_once(value: Any) -> None:
    joined = b"".join(jsonrpc.result_pieces(7, value))
    assert joined + b"\n" == jsonrpc.result(7, value)


def test_kept_json_is_sent_as_it_is() -> None:
    kept = jsonrpc.RawJson(memoryview(b'xx[{"path":"a"}]yy')[2:-2])
    assert (
        b"".join(jsonrpc.result_pieces("i", kept))
        == b'{"jsonrpc":"2.0","id":"i","result":[{"path":"a"}]}'
    )


async def test_an_answer_line_never_passes_its_budget(
    socket_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch shares one line: results past the budget become short errors, in place."""
    monkeypatch.setattr(jsonrpc, "MAX_ANSWER", 64 * 1024)
    big = [{"n": i, "padding": "x" * 80} for i in range(200)]  # ~20 KiB encoded

    async def listing(params: dict[str, Any], notify: Notify) -> Any:
        return big

    server = ControlServer(socket_path, {"listing": listing, "echo": echo})
    batch = [{"jsonrpc": "2.0", "id": i, "method": "listing"} for i in range(10)]
    batch.append({"jsonrpc": "2.0", "id": "x" * 300, "method": "echo", "params": {}})
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        stream = await trio.open_unix_socket(str(socket_path))
        async with stream:
            await stream.send_all(json.dumps(batch).encode() + b"\n")
            line = b""
            while not line.endswith(b"\n"):
                line += await stream.receive_some(65536)
        nursery.cancel_scope.cancel()
    assert len(line) <= 64 * 1024 + 1
    answers = json.loads(line)
    assert [a["id"] for a in answers] == [b["id"] for b in batch]  # one each, in order
    results = [a for a in answers if "result" in a]
    assert len(results) >= 2 and results[-1] == {"jsonrpc": "2.0", "id": "x" * 300, "result": {}}
    assert all(a["result"] == big for a in results[:-1])
    errors = [a["error"] for a in answers if "error" in a]
    assert errors  # 10 listings of ~20 KiB do not fit in 64 KiB
    for error in errors:
        assert error["code"] == jsonrpc.INTERNAL_ERROR
        assert error["message"].startswith("answer too large: 'listing'")
