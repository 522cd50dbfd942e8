"""A real redis-server that a test can start, kill, pause and start again on one port."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.support import free_port, redis_server_path


def require_redis_server() -> str:
    server = redis_server_path()
    if server is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing: .ci/run must install it (apt redis-server)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return server


class RedisProcess:
    """One port for the whole test, so that registryd's URL stays valid across restarts."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self._server = require_redis_server()
        self._workdir = workdir
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15) -> None:
        assert self._process is None, "already running"
        self._process = subprocess.Popen(
            # No persistence: a restart starts empty, as a crashed cache would.
            [self._server, "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no"],
            cwd=self._workdir,
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self._process.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(f"redis-server did not start on {self.port}") from None
                    time.sleep(0.025)
        finally:
            client.close()

    def kill(self) -> None:
        """Die at once, as on a crash or an OOM kill: no goodbye to the clients."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    def pause(self) -> None:
        """Stop answering while keeping connections open: a hung or unreachable Redis."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)  # a paused server cannot exit
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None


@contextmanager
def running_redis(workdir: Path) -> Iterator[str]:
    """A fresh redis-server for the block; its URL."""
    server = RedisProcess(workdir)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
