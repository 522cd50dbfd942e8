"""Params that are not Unicode text (lone surrogates) get -32602 from every control method."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostile.attacker import rpc
from tests.hostile.test_control import send_line
from tests.support import RunningPeer, run_p2pd, run_registryd

METHODS = ["status", "peers", "ls", "shared", "rescan", "fetch", "downloads", "history", "cancel"]


@pytest.fixture(scope="module")
def victim(module_dir: Path) -> Iterator[RunningPeer]:
    with (
        run_registryd(module_dir) as registry,
        run_p2pd(module_dir, "gina", [registry.url]) as gina,
    ):
        yield gina


def call(method: str, params: str) -> bytes:
    """A call whose params JSON is written by hand (json.dumps would refuse a lone surrogate)."""
    return b'{"jsonrpc":"2.0","id":7,"method":"%s","params":%s}' % (
        method.encode(),
        params.encode(),
    )


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "params,named",
    [
        ('{"peer":"gi\\ud800na","path":"a.txt"}', "peer"),
        ('{"peer":"gina","path":"a\\udfff.txt"}', "path"),
        ('{"id":"\\ud83d"}', "id"),
        ('{"path":"ok","extra":["x","\\ud800"]}', "extra"),
    ],
)
def test_a_lone_surrogate_gets_invalid_params_naming_it(
    victim: RunningPeer, method: str, params: str, named: str
) -> None:
    history_before = rpc(victim.socket_path, "history")["result"]
    answer = json.loads(send_line(victim.socket_path, call(method, params), timeout=30))
    assert answer["id"] == 7
    error = answer["error"]
    assert error["code"] == -32602, error
    assert f"'{named}'" in error["message"] and "Unicode" in error["message"], error
    status = rpc(victim.socket_path, "status")["result"]
    assert "control method" not in status["failures"], status["failures"]
    assert rpc(victim.socket_path, "history")["result"] == history_before


def test_in_a_batch_only_the_bad_call_is_refused(victim: RunningPeer) -> None:
    line = (
        b"["
        + call("status", "{}")
        + b","
        + call("ls", '{"peer":"\\udc80"}').replace(b'"id":7', b'"id":8')
        + b"]"
    )
    answers = {a["id"]: a for a in json.loads(send_line(victim.socket_path, line, timeout=30))}
    assert "result" in answers[7]
    assert answers[8]["error"]["code"] == -32602
