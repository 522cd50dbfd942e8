"""Real redis-server processes that a test can start, kill, pause and start again on one port.

Besides a single server: a replica (``replica_of``) and a Sentinel watching a
primary (``SentinelProcess``), to fail the primary over for real.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

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

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        replica_of: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self._server = require_redis_server()
        self._workdir = workdir
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._args = ["--replicaof", "127.0.0.1", str(replica_of)] if replica_of else []
        self._args += extra_args
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15) -> None:
        assert self._process is None, "already running"
        self._process = subprocess.Popen(
            # No persistence: a restart starts empty, as a crashed cache would.
            [self._server, "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no"]
            # A replica gets its first copy at once, not after the default 5 s.
            + ["--repl-diskless-sync-delay", "0"]
            + self._args,
            cwd=self._workdir,
            stdout=subprocess.DEVNULL,
        )
        _wait_for_ping(self._process, self.port, timeout)

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


class SentinelProcess:
    """``redis-server --sentinel`` watching one primary (and its known replicas)."""

    def __init__(
        self,
        workdir: Path,
        primary_port: int,
        *,
        service: str = "p2p",
        replica_ports: Sequence[int] = (),
        down_after_ms: int = 500,
        failover_timeout_ms: int = 3000,
        extra_config: Sequence[str] = (),
    ) -> None:
        self._server = require_redis_server()
        self.port = free_port()
        self.service = service
        self.config_path = workdir / f"sentinel-{self.port}.conf"
        self.log_path = workdir / f"sentinel-{self.port}.log"
        # Quorum 1: this one sentinel may declare the primary down and fail it
        # over alone.  Listing the replicas spares waiting for the primary's
        # next INFO (every 10 s) to discover them.
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {workdir}",
            f"logfile {self.log_path}",
            f"sentinel monitor {service} 127.0.0.1 {primary_port} 1",
            f"sentinel down-after-milliseconds {service} {down_after_ms}",
            f"sentinel failover-timeout {service} {failover_timeout_ms}",
            *(f"sentinel known-replica {service} 127.0.0.1 {port}" for port in replica_ports),
            *extra_config,
        ]
        # Sentinel rewrites its own file (the current primary, the epochs).
        self.config_path.write_text("\n".join(lines) + "\n")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15) -> None:
        assert self._process is None, "already running"
        self._process = subprocess.Popen(
            [self._server, str(self.config_path), "--sentinel"],
            cwd=self.config_path.parent,
            stdout=subprocess.DEVNULL,
        )
        _wait_for_ping(self._process, self.port, timeout)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None


def _wait_for_ping(process: subprocess.Popen[bytes], port: int, timeout: float) -> None:
    # No retries inside redis-py: this loop is the retry, and it sees a refusal at once.
    client = redis.Redis(port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.ping()
                return
            except redis.AuthenticationError:
                return  # up, with a password
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"redis-server did not start on {port}") from None
                time.sleep(0.025)
    finally:
        client.close()


@contextmanager
def running_redis(workdir: Path) -> Iterator[str]:
    """A fresh redis-server for the block; its URL."""
    server = RedisProcess(workdir)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
