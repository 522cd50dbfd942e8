"""The control socket against a hostile local client: fuzzed lines, hoarded connections, kills."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hostile.attacker import assert_serving, ctl, poll, rpc, sha256_file
from tests.support import VENV_BIN, RunningPeer, run_p2pd, run_registryd

FAST = "heartbeat_interval = 0.5\n"
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}


@dataclass
class Pair:
    erin: RunningPeer  # the victim
    frank: RunningPeer  # a slow source


@pytest.fixture(scope="module")
def pair(module_dir: Path) -> Iterator[Pair]:
    share = module_dir / "frank" / "share"
    share.mkdir(parents=True)
    for name in SIGNALS:
        (share / f"{name}.bin").write_bytes(os.urandom(6_000_000))
    with run_registryd(module_dir) as registry:
        urls = [registry.url]
        with (
            run_p2pd(module_dir, "erin", urls, extra_config=FAST) as erin,
            run_p2pd(
                module_dir, "frank", urls, extra_config=FAST + "upload_rate_limit = 1000000\n"
            ) as frank,
        ):
            yield Pair(erin, frank)


def send_line(path: Path, line: bytes, timeout: float = 5) -> bytes:
    """Send one line; collect what comes back until a newline, a close or the timeout."""
    received = b""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        try:
            sock.sendall(line + b"\n")
            while b"\n" not in received:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except (TimeoutError, ConnectionError):
            pass
    return received


def assert_answers(peer: RunningPeer) -> None:
    assert peer.process.poll() is None, f"p2pd ended:\n{peer.log()[-3000:]}"
    started = time.monotonic()
    answer = rpc(peer.socket_path, "status", timeout=10)
    assert "result" in answer and answer["result"]["name"] == peer.name, answer
    assert time.monotonic() - started < 10


def assert_replies_are_json(received: bytes) -> None:
    for line in received.splitlines():
        message = json.loads(line)
        assert isinstance(message, dict | list), message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
methods = (
    st.sampled_from(
        ["status", "peers", "ls", "shared", "fetch", "downloads", "history", "cancel", "nope", ""]
    )
    | json_values
)
requests = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2.0, None]) | json_values,
        "id": json_values,
        "method": methods,
        "params": json_values,
    },
)


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


lines = st.one_of(
    st.binary(max_size=300).map(lambda b: b.replace(b"\n", b" ")),
    st.binary(min_size=1, max_size=60).map(lambda b: b'{"jsonrpc":"2.0","method":"' + b + b'"}'),
    st.sampled_from(
        [b"\xff\xfe", b'{"jsonrpc":"2.0","id":1,"method":"\xc3\x28"}', b"\xed\xa0\x80"]
    ),
    requests.map(encode),
    st.lists(requests, max_size=5).map(encode),
    st.integers(1, 6000).map(lambda n: b"[" * n),
    st.integers(1, 6000).map(lambda n: b'{"a":' * n),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    json_values.map(encode),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(line=lines)
def test_fuzzed_lines(pair: Pair, line: bytes) -> None:
    erin = pair.erin
    assert_replies_are_json(send_line(erin.socket_path, line))
    assert_answers(erin)


@pytest.mark.parametrize(
    "line",
    [
        b"a" * (2 << 20),
        b'{"jsonrpc":"2.0","id":1,"method":"status","params":{"x":"' + b"a" * (2 << 20) + b'"}}',
        b"[" * 5000,
        b'{"a":' * 5000,
        b"[" * 100_000 + b"]" * 100_000,
        b'{"jsonrpc":"2.0","id":' + b"[" * 5000 + b"]" * 5000 + b',"method":"status"}',
    ],
    ids=["2MiB-garbage", "2MiB-param", "open-brackets", "open-objects", "deep-valid", "deep-id"],
)
def test_huge_and_deep_lines(pair: Pair, line: bytes) -> None:
    assert_replies_are_json(send_line(pair.erin.socket_path, line, timeout=15))
    assert_answers(pair.erin)
    assert_serving(pair.erin.process, pair.erin.socket_path, pair.erin.log())


def test_idle_connections_do_not_lock_out_p2pctl(pair: Pair) -> None:
    hoard: list[socket.socket] = []
    try:
        for _ in range(80):
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(5)
            sock.connect(str(pair.erin.socket_path))
            hoard.append(sock)
        started = time.monotonic()
        result = ctl(pair.erin.socket_path, "--json", "status", timeout=30)
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        assert elapsed < 12, f"p2pctl status took {elapsed:.1f} s behind 80 idle connections"
    finally:
        for sock in hoard:
            sock.close()
    assert_answers(pair.erin)


def test_status_then_close_before_reading(pair: Pair) -> None:
    request = b'{"jsonrpc":"2.0","id":1,"method":"status"}\n'
    for i in range(200):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(pair.erin.socket_path))
            sock.sendall(request * (1 + i % 3))
            if i % 2:
                sock.shutdown(socket.SHUT_RDWR)
    assert_answers(pair.erin)


@pytest.mark.parametrize("name", list(SIGNALS))
def test_a_fetch_killed_while_it_waits(pair: Pair, name: str) -> None:
    erin = pair.erin
    poll(
        lambda: "frank" in [p["name"] for p in rpc(erin.socket_path, "peers")["result"]],
        timeout=30,
        what="erin to see frank",
    )
    process = subprocess.Popen(
        [
            str(VENV_BIN / "p2pctl"),
            "--socket",
            str(erin.socket_path),
            "fetch",
            "frank",
            f"{name}.bin",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        poll(
            lambda: bool(rpc(erin.socket_path, "downloads")["result"]),
            timeout=30,
            what="the transfer to start",
        )
        process.send_signal(SIGNALS[name])
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert_answers(erin)
    # Whether the daemon finishes or cancels the orphaned transfer, nothing is corrupt.
    poll(
        lambda: not rpc(erin.socket_path, "downloads")["result"],
        timeout=60,
        what="the orphaned transfer to end",
    )
    landed = erin.download_dir / f"{name}.bin"
    if landed.exists():
        assert sha256_file(landed) == sha256_file(pair.frank.share_dir / f"{name}.bin")
    assert_serving(erin.process, erin.socket_path, erin.log())
