"""Helpers shared by the tests: certificates, ports, and real registryd processes."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from p2pcommon.identity import peer_id_from_pem
from p2pcommon.models import RegisterRequest
from p2pcommon.signing.member_proof import (
    add_member_signature,
    created_of,
    member_params,
    sign_base,
    signature_base,
)
from p2pd.tls.identity import build_certificate

SECRET = "test-secret-of-the-network"
VENV_BIN = Path(sys.executable).parent


def make_cert_pem() -> str:
    """A fresh certificate made by p2pd's own code, as a daemon makes it."""
    cert = build_certificate(ec.generate_private_key(ec.SECP256R1()))
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


@dataclass(frozen=True)
class Peer:
    """A member's identity as p2pd makes it: its key, its certificate, its id."""

    id: str
    cert: str
    name: str
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def new(cls, name: str = "alice") -> Peer:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = build_certificate(key).public_bytes(serialization.Encoding.PEM).decode("ascii")
        return cls(id=peer_id_from_pem(cert), cert=cert, name=name, key=key)

    def registration(
        self, port: int = 7070, *, name: str | None = None, addresses: list[str] | None = None
    ) -> RegisterRequest:
        return RegisterRequest(
            id=self.id, name=name or self.name, cert=self.cert, port=port, addresses=addresses
        )

    async def prove(self, base: bytes) -> bytes:
        """The member signature's value (docs/protocol.md §2.4), signed in this process."""
        return sign_base(self.key, base)

    def add_proof(self, headers: dict[str, str], method: str, path: str, nonce: str) -> None:
        """Add the ``member`` signature to ``headers`` signed by p2pcommon.signing.signer."""
        params = member_params(self.id, created_of(headers["Signature-Input"]), nonce)
        base = signature_base(method, path, headers["Content-Digest"], params)
        add_member_signature(headers, params, sign_base(self.key, base))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NotifySocket:
    """A NOTIFY_SOCKET like systemd's: collects the daemon's sd_notify messages.

    Read continuously by a thread, as systemd does: a socket nobody reads
    fills (~10 datagrams) and the daemon's later messages are dropped.
    """

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="notify-", dir="/tmp")
        self.path = os.path.join(self._dir, "sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []
        self._arrived = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(65536).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            message = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            with self._arrived:
                self.messages.append(message)
                del self.messages[:-1000]  # a long-running daemon's statuses
                self._arrived.notify_all()

    def wait_for(self, key: str, value: str | None = None, timeout: float = 15) -> dict[str, str]:
        """Block until a message sets ``key`` (to ``value``); returns that message."""

        def found() -> dict[str, str] | None:
            for message in self.messages:
                if key in message and value in (None, message[key]):
                    return message
            return None

        with self._arrived:
            if not self._arrived.wait_for(lambda: found() is not None, timeout):
                raise TimeoutError(f"no {key}={value or '*'} within {timeout} s")
            result = found()
        assert result is not None
        return result

    def clear(self) -> None:
        with self._arrived:
            self.messages.clear()

    def close(self) -> None:
        self._closed = True
        self._reader.join(timeout=5)
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


@dataclass
class RunningRegistry:
    url: str
    process: subprocess.Popen[str]
    log_path: Path
    notify: NotifySocket

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


def reload(daemon: RunningRegistry | RunningPeer) -> None:
    """SIGHUP, as `systemctl reload` sends it; wait for the RELOADING=1 … READY=1 pair."""
    daemon.notify.clear()
    daemon.process.send_signal(signal.SIGHUP)
    daemon.notify.wait_for("RELOADING", "1")
    daemon.notify.wait_for("READY", "1")


def registryd_env(port: int, extra: Mapping[str, str] = {}) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRYD_", "NOTIFY_"))}
    env.update({"REGISTRYD_SECRET": SECRET, "REGISTRYD_LISTEN": f"127.0.0.1:{port}"})
    env.update(extra)
    return env


@contextmanager
def run_registryd(
    tmp_path: Path,
    extra_env: Mapping[str, str] = {},
    port: int | None = None,
    *,
    wrapper: Sequence[str] = (),
) -> Iterator[RunningRegistry]:
    """Start the real registryd, wait for its READY=1, stop it with SIGTERM afterwards.

    It gets an empty config file so that a /etc/registryd.toml on the machine
    never leaks into a test; the environment configures it.  ``wrapper`` is a
    command that execs it (``prlimit --nofile=…``).
    """
    port = port or free_port()
    config = tmp_path / f"registryd-{port}.toml"
    config.write_text("")
    log_path = tmp_path / f"registryd-{port}.log"
    command = [*wrapper, str(VENV_BIN / "registryd"), "--config", str(config)]
    with daemon_process(command, registryd_env(port, extra_env), log_path) as (process, notify):
        yield RunningRegistry(f"http://127.0.0.1:{port}", process, log_path, notify)


@contextmanager
def daemon_process(
    command: list[str], env: dict[str, str], log_path: Path, ready_timeout: float = 30
) -> Iterator[tuple[subprocess.Popen[str], NotifySocket]]:
    """Run a daemon with its own NOTIFY_SOCKET until READY=1; SIGTERM (then SIGKILL) it after."""
    notify = NotifySocket()
    env = {**env, "NOTIFY_SOCKET": notify.path}
    with log_path.open("a") as log_file:
        process = subprocess.Popen(
            command, env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True
        )
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            try:
                notify.wait_for("READY", "1", timeout=0.5)
                break
            except TimeoutError:
                if process.poll() is not None or time.monotonic() > deadline:
                    name = Path(command[0]).name
                    raise AssertionError(
                        f"{name} sent no READY=1:\n{log_path.read_text()}"
                    ) from None
        yield process, notify
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        notify.close()


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


#: How long a test waits for a real process to show a change, at most.
WAIT_LIMIT = 10.0


async def wait_until(check: Callable[[], Awaitable[bool]], *, what: str) -> None:
    """Poll a real process's observable state: time has to pass, no event reaches us."""
    with trio.move_on_after(WAIT_LIMIT):
        for _ in itertools.count():
            if await check():
                return
            await trio.sleep(0.05)
    raise AssertionError(f"timed out after {WAIT_LIMIT} s waiting for {what}")


@dataclass
class RunningPeer:
    name: str
    process: subprocess.Popen[str]
    log_path: Path
    notify: NotifySocket
    socket_path: Path
    share_dir: Path
    download_dir: Path
    state_dir: Path
    config_path: Path
    port: int

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the real p2pctl against this peer's control socket."""
        return subprocess.run(
            [str(VENV_BIN / "p2pctl"), "--socket", str(self.socket_path), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def ctl_json(self, *args: str) -> Any:
        result = self.ctl("--json", *args)
        assert result.returncode == 0, f"p2pctl {' '.join(args)}: {result.stderr}"
        return json.loads(result.stdout)

    async def actl_json(self, *args: str) -> Any:
        """p2pctl --json from an async test, without blocking the trio loop."""
        result = await trio.run_process(
            [str(VENV_BIN / "p2pctl"), "--socket", str(self.socket_path), "--json", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert result.returncode == 0, f"p2pctl {' '.join(args)}: {result.stderr.decode()}"
        return json.loads(result.stdout)


def p2pd_config(
    base: Path, name: str, registries: list[str], port: int, extra: str = ""
) -> tuple[Path, Path, Path, Path, Path]:
    root = base / name
    share, downloads, state = root / "share", root / "downloads", root / "state"
    for folder in (share, downloads, state):
        folder.mkdir(parents=True, exist_ok=True)
    # AF_UNIX paths are short: keep the socket under /tmp.
    socket_path = Path(tempfile.mkdtemp(prefix="p2pd-", dir="/tmp")) / "control.sock"
    config = root / "p2pd.toml"
    config.write_text(
        f"name = {json.dumps(name)}\n"
        f'share_dir = "{share}"\n'
        f'download_dir = "{downloads}"\n'
        f'state_dir = "{state}"\n'
        f'control_socket = "{socket_path}"\n'
        f'listen = "127.0.0.1:{port}"\n'
        f"registries = {json.dumps(registries)}\n"
        f"secret = {json.dumps(SECRET)}\n"
        "stable_after = 0\n" + extra  # files written by tests are complete: offered at once
    )
    return config, share, downloads, state, socket_path


@contextmanager
def run_p2pd(
    base: Path,
    name: str,
    registries: list[str],
    *,
    extra_config: str = "",
    port: int | None = None,
    extra_env: Mapping[str, str] = {},
    wrapper: Sequence[str] = (),
) -> Iterator[RunningPeer]:
    """Start the real p2pd with its own folders; wait for READY=1; SIGTERM it afterwards."""
    port = port or free_port()
    config, share, downloads, state, socket_path = p2pd_config(
        base, name, registries, port, extra_config
    )
    log_path = base / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("P2PD_", "NOTIFY_"))}
    env.update(extra_env)
    command = [*wrapper, str(VENV_BIN / "p2pd"), "--config", str(config)]
    try:
        with daemon_process(command, env, log_path, ready_timeout=60) as (process, notify):
            yield RunningPeer(
                name, process, log_path, notify, socket_path, share, downloads, state, config, port
            )
    finally:
        shutil.rmtree(socket_path.parent, ignore_errors=True)
