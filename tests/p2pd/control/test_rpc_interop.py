"""A third-party JSON-RPC 2.0 client (jsonrpcclient) against a running p2pd's control socket.

jsonrpcclient builds the requests and parses the answers as the specification
defines them; this test only moves the lines over the Unix socket.  It proves
that a standard client needs nothing of p2pctl's: single calls, batches and
errors, and no unsolicited notification before an answer.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonrpcclient import Error, Ok, notification, parse, request

from tests.support import RunningPeer, free_port, run_p2pd


@pytest.fixture
def lonely(tmp_path: Path) -> Iterator[RunningPeer]:
    # No registry answers: the daemon serves its control socket all the same.
    with run_p2pd(tmp_path, "lonely", [f"http://127.0.0.1:{free_port()}"]) as peer:
        yield peer


class Line:
    """One connection to the control socket: a JSON text per line, each way."""

    def __init__(self, path: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(10)
        self._sock.connect(str(path))
        self._file = self._sock.makefile("rb")

    def send(self, message: Any) -> None:
        self._sock.sendall(json.dumps(message).encode() + b"\n")

    def receive(self) -> Any:
        line = self._file.readline()
        assert line, "the daemon closed the connection"
        return json.loads(line)

    def close(self) -> None:
        self._file.close()
        self._sock.close()


def test_a_standard_client_calls_batches_and_gets_errors(lonely: RunningPeer) -> None:
    line = Line(lonely.socket_path)
    try:
        # A single call, without params: jsonrpcclient leaves them out.
        line.send(request("status"))
        status = parse(line.receive())
        assert isinstance(status, Ok)
        assert (status.result["name"], status.result["registered"]) == ("lonely", False)

        # An error: an application error with its data, and an unknown method.
        line.send(request("ls", params={"peer": "nobody"}))
        refused = parse(line.receive())
        assert isinstance(refused, Error)
        # No registry answers this lonely daemon: it says so, and what to do.
        assert refused.code == 1 and "no registry answered" in refused.message
        assert "'nobody'" in refused.message and "try again" in refused.message
        line.send(request("no-such-method"))
        unknown = parse(line.receive())
        assert isinstance(unknown, Error) and unknown.code == -32601

        # A batch with a notification: answers for the three calls only, matched by id.
        calls = [
            request("peers"),
            request("shared"),
            notification("status"),
            request("fetch", params={"peer": "nobody", "path": "a.txt"}),
        ]
        line.send(calls)
        answers = line.receive()
        assert isinstance(answers, list)
        parsed = parse(answers)
        assert not isinstance(parsed, Ok | Error)  # a list in, a list of answers out
        by_id = {r.id: r for r in parsed}
        assert set(by_id) == {c["id"] for c in calls if "id" in c}
        # `peers` asks the registry (none answers here): an error that says so.
        listing = by_id[calls[0]["id"]]
        assert isinstance(listing, Error) and listing.code == 1
        assert "no registry answered" in listing.message
        assert by_id[calls[1]["id"]] == Ok([], calls[1]["id"])
        fetch = by_id[calls[3]["id"]]
        assert isinstance(fetch, Error) and fetch.code == 1

        # A batch of notifications only gets no answer: the next line is the next call's.
        line.send([notification("status"), notification("peers")])
        line.send(request("history"))
        history = parse(line.receive())
        assert isinstance(history, Ok)
        # The refused fetch is in the history, as every outcome is.
        (failed,) = history.result
        assert (failed["status"], failed["peer_name"], failed["remote_path"]) == (
            "failed",
            "nobody",
            "a.txt",
        )
        assert failed["error"] == fetch.message
        assert failed["path"] == str(lonely.download_dir / "a.txt")

        # Invalid requests, answered as the specification says.
        line.send([])
        empty = parse(line.receive())
        assert isinstance(empty, Error) and (empty.code, empty.id) == (-32600, None)
        line.send({"jsonrpc": "2.0", "id": 9, "method": "status", "params": None})
        null = parse(line.receive())
        assert isinstance(null, Error) and (null.code, null.id) == (-32600, 9)
    finally:
        line.close()
