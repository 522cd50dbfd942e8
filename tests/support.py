"""Helpers shared by the tests: certificates, ports, and real registryd processes."""

from __future__ import annotations

import datetime
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from p2pcommon.identity import peer_id_from_pem

SECRET = "test-secret-of-the-network"
VENV_BIN = Path(sys.executable).parent


def make_cert_pem(common_name: str = "p2pd") -> str:
    """A fresh EC P-256 self-signed certificate, as p2pd makes its own."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


@dataclass(frozen=True)
class Peer:
    id: str
    cert: str
    name: str

    @classmethod
    def new(cls, name: str = "alice") -> Peer:
        cert = make_cert_pem(name)
        return cls(id=peer_id_from_pem(cert), cert=cert, name=name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NotifySocket:
    """A NOTIFY_SOCKET like systemd's: collects the daemon's sd_notify messages."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="notify-", dir="/tmp")
        self.path = os.path.join(self._dir, "sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str | None = None, timeout: float = 15) -> dict[str, str]:
        """Block until a message sets ``key`` (to ``value``); returns that message."""
        for message in self.messages:
            if key in message and value in (None, message[key]):
                return message
        self._sock.settimeout(timeout)
        while True:
            data = self._sock.recv(65536).decode()
            message = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            self.messages.append(message)
            if key in message and value in (None, message[key]):
                return message

    def close(self) -> None:
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


def registryd_env(port: int, extra: Mapping[str, str] = {}) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRYD_", "NOTIFY_"))}
    env.update({"REGISTRYD_SECRET": SECRET, "REGISTRYD_LISTEN": f"127.0.0.1:{port}"})
    env.update(extra)
    return env


@contextmanager
def run_registryd(
    tmp_path: Path, extra_env: Mapping[str, str] = {}, port: int | None = None
) -> Iterator[RunningRegistry]:
    """Start the real registryd, wait for its READY=1, stop it with SIGTERM afterwards.

    It gets an empty config file so that a /etc/registryd.toml on the machine
    never leaks into a test; the environment configures it.
    """
    port = port or free_port()
    config = tmp_path / f"registryd-{port}.toml"
    config.write_text("")
    log_path = tmp_path / f"registryd-{port}.log"
    notify = NotifySocket()
    env = registryd_env(port, extra_env)
    env["NOTIFY_SOCKET"] = notify.path
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [str(VENV_BIN / "registryd"), "--config", str(config)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
    running = RunningRegistry(f"http://127.0.0.1:{port}", process, log_path, notify)
    try:
        try:
            notify.wait_for("READY", "1")
        except TimeoutError:
            raise AssertionError(f"registryd sent no READY=1:\n{running.log()}") from None
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
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
        f"secret = {json.dumps(SECRET)}\n" + extra
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
) -> Iterator[RunningPeer]:
    """Start the real p2pd with its own folders; wait for READY=1; SIGTERM it afterwards."""
    port = port or free_port()
    config, share, downloads, state, socket_path = p2pd_config(
        base, name, registries, port, extra_config
    )
    log_path = base / f"{name}.log"
    notify = NotifySocket()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("P2PD_", "NOTIFY_"))}
    env.update(extra_env)
    env["NOTIFY_SOCKET"] = notify.path
    with log_path.open("a") as log_file:
        process = subprocess.Popen(
            [str(VENV_BIN / "p2pd"), "--config", str(config)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
    peer = RunningPeer(
        name, process, log_path, notify, socket_path, share, downloads, state, config, port
    )
    try:
        try:
            notify.wait_for("READY", "1", timeout=60)
        except TimeoutError:
            raise AssertionError(f"p2pd {name} sent no READY=1:\n{peer.log()}") from None
        yield peer
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        notify.close()
        shutil.rmtree(socket_path.parent, ignore_errors=True)
