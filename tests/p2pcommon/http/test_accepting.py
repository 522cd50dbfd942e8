"""A server out of file descriptors: accept is retried, logged once, and recovers.

A real HttpServer in a child process whose open-file limit is lowered after
the server chose its connection bound (as when something else holds the
descriptors): the clients of this test make accept fail with EMFILE.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time

from tests.hostile.attacker import Closed, read_response

SERVER = r"""
import logging, resource, sys, trio
from p2pcommon.http.events import json_response
from p2pcommon.http.server import HttpServer, Limits
from p2pcommon.logs import setup_logging

async def ok(request):
    return json_response(200, {"ok": True})

async def main():
    setup_logging()
    server = HttpServer(ok, Limits(max_connections=1000, max_per_address=1000))
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run, listeners)
        print(listeners[0].socket.getsockname()[1], flush=True)
        await trio.sleep(float(sys.argv[1]))
        nursery.cancel_scope.cancel()

trio.run(main)
"""


def answered(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: s\r\n\r\n")
            return read_response(sock).status == 200
    except (OSError, Closed):
        return False


def test_accept_failing_with_emfile_is_logged_once_and_recovers() -> None:
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(150)]
        time.sleep(1.5)  # some fifteen retries of accept, ten a second
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 3
        while not answered(port):
            assert time.monotonic() < deadline, "the server did not accept again"
            time.sleep(0.1)
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=20)
        if server.poll() is None:
            server.kill()
        _, log = server.communicate()
    assert log.count("cannot accept connections: EMFILE (Too many open files)") == 1, log
    assert "Traceback" not in log and "trio.serve_listeners" not in log, log
