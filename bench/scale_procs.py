"""The real processes of bench/scale.py: registryd, redis-server, p2pd; what /proc says of them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.scale_wire import AnswerReader, FastSigner, load_key
from p2pcommon.signing.signer import Signer

BIN = Path(sys.executable).parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine have used (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def memory_kib(pid: int, key: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait(check: Any, what: str, process: subprocess.Popen[bytes], log: Path, limit: float) -> None:
    deadline = time.monotonic() + limit
    while True:
        try:
            if check():
                return
        except (OSError, httpx.HTTPError, redis.RedisError, subprocess.SubprocessError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise SystemExit(f"scale: {what} did not start (log {log}):\n{tail}")
        time.sleep(0.05)


@dataclass
class RedisServer:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def commands(self) -> tuple[int, int]:
        """(commands processed, calls counted by command incl. those inside scripts)."""
        client = redis.Redis(port=self.port)
        try:
            total = int(client.info("stats")["total_commands_processed"])
            stats = client.info("commandstats")
            calls = sum(int(v["calls"]) for v in stats.values() if isinstance(v, dict))
        finally:
            client.close()
        return total, calls


def start_redis(workdir: Path) -> RedisServer:
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("scale: redis-server is missing (apt-get install redis-server)")
    port = free_port()
    log = workdir / f"redis-{port}.log"
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        + ["--maxclients", "10000"],
        cwd=workdir,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    _wait(lambda: redis.Redis(port=port).ping(), "redis-server", process, log, 15)
    return RedisServer(process, port)


def registryd_has(key: str) -> bool:
    from registryd.config import RegistrySettings

    return key in RegistrySettings.model_fields


@dataclass
class Registry:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_registryd(
    workdir: Path,
    secret: str,
    store: str,
    port: int,
    extra: dict[str, str],
    *,
    limits: bool = False,
) -> Registry:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRYD_", "NOTIFY_"))}
    env.update(
        {
            "REGISTRYD_SECRET": secret,
            "REGISTRYD_LISTEN": f"127.0.0.1:{port}",
            "REGISTRYD_STORE": store,
            **extra,
        }
    )
    if not limits:
        # The saturation phases come from a few source addresses (a leave and a new
        # register of the same member, lookups without pause): no per-source limits,
        # so that they measure what each request costs, not what a 429 costs.
        env.update({"REGISTRYD_NEW_MEMBER_RATE": "0", "REGISTRYD_LOOKUP_RATE": "0"})
    log = workdir / f"registryd-{port}-{time.monotonic_ns()}.log"
    # Its own READY=1, not /healthz: with reuse_port a sibling answers on the port.
    notify_path = workdir / f"notify-{time.monotonic_ns()}"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(0.2)
    env["NOTIFY_SOCKET"] = str(notify_path)
    process = subprocess.Popen(
        [str(BIN / "registryd"), "--config", os.devnull],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )

    def ready() -> bool:
        return b"READY=1" in notify.recv(4096)

    try:
        _wait(ready, "registryd", process, log, 30)
    finally:
        # Gone, its later notifications fail at once instead of filling a queue.
        notify.close()
        notify_path.unlink()
    return Registry(process, port, log)


def registry_metric(url: str, name: str) -> float | None:
    """One unlabelled series of a registry's /metrics, or None."""
    try:
        text = httpx.get(url + "/metrics", timeout=30).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def register_one(url: str, secret: str, member: tuple[int, str, str], key_pem: bytes) -> int:
    """Register one member (proven by ``key_pem``) on a socket of its own: the status."""
    _, member_id, pem = member
    body = json.dumps({"id": member_id, "name": "newcomer", "cert": pem, "port": 7070}).encode()
    host, _, port = url.removeprefix("http://").partition(":")
    raw, _ = FastSigner(secret).request(
        "POST", "/register", body, host, time.time(), (member_id, load_key(key_pem))
    )
    reader = AnswerReader()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(raw)
        while (answer := reader.next()) is None:
            data = sock.recv(65536)
            if not data:
                return 0
            reader.feed(data)
    return answer.status


def fetch_clients(url: str, secret: str) -> tuple[dict[str, Any], int]:
    """A signed, verified ``GET /clients`` (full list): its JSON and its size in bytes."""
    signer = Signer(secret)
    headers, nonce = signer.sign_request("GET", "/clients", b"", now=time.time())
    answer = httpx.get(url + "/clients", headers=headers, timeout=60)
    answer.raise_for_status()
    signer.verify_response(
        answer.status_code,
        answer.headers.multi_items(),
        answer.content,
        nonce=nonce,
        now=time.time(),
    )
    return json.loads(answer.content), len(answer.content)


@dataclass
class Daemon:
    """A real p2pd with its own folders."""

    name: str
    process: subprocess.Popen[bytes]
    root: Path
    socket_path: Path
    port: int

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "p2pctl"), "--socket", str(self.socket_path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def status(self) -> dict[str, Any]:
        result = self.ctl("--json", "status", timeout=60)
        if result.returncode != 0:
            raise subprocess.SubprocessError(result.stderr)
        value: dict[str, Any] = json.loads(result.stdout)
        return value

    @property
    def cert_pem(self) -> str:
        return (self.root / "state" / "identity.crt").read_text()

    def tls_first_answer(self, other: Daemon, timeout: float = 60) -> tuple[float, float, str]:
        """Connect to ``other`` with this daemon's identity, as its peer client does:
        (handshake seconds, seconds to the first answer's status line, that line)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.check_hostname = False
        # As p2pd's client: the pinned certificate is an anchor by itself, also
        # when the network CA issued it.
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        context.load_cert_chain(
            self.root / "state" / "identity.crt", self.root / "state" / "identity.key"
        )
        context.load_verify_locations(cadata=other.cert_pem)
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", other.port), timeout=timeout) as raw:
            # As trio's streams do: without it Nagle holds the request behind the
            # handshake's last flight until the server's delayed ACK (40 ms).
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = context.wrap_socket(raw)
            handshake = time.perf_counter() - started
            tls.sendall(b"GET /files HTTP/1.1\r\nHost: peer\r\n\r\n")
            line = tls.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
            answered = time.perf_counter() - started
            tls.close()
            return handshake, answered, line


def start_p2pd(workdir: Path, name: str, secret: str, registry: str) -> Daemon:
    root = workdir / name
    for folder in ("share", "downloads", "state"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "share" / "hello.txt").write_text("hello\n")
    # AF_UNIX paths are short: the socket lives under /tmp.
    socket_path = Path(tempfile.mkdtemp(prefix="scale-", dir="/tmp")) / "control.sock"
    port = free_port()
    config = root / "p2pd.toml"
    config.write_text(
        f"name = {json.dumps(name)}\n"
        f'share_dir = "{root / "share"}"\ndownload_dir = "{root / "downloads"}"\n'
        f'state_dir = "{root / "state"}"\ncontrol_socket = "{socket_path}"\n'
        f'listen = "127.0.0.1:{port}"\nregistries = ["{registry}"]\n'
        f"secret = {json.dumps(secret)}\nstable_after = 0\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("P2PD_", "NOTIFY_"))}
    log = workdir / f"{name}.log"
    process = subprocess.Popen(
        [str(BIN / "p2pd"), "--config", str(config)],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    daemon = Daemon(name, process, root, socket_path, port)
    _wait(lambda: daemon.status()["registered"], f"p2pd {name}", process, log, 60)
    return daemon


def stop_p2pd(daemon: Daemon) -> None:
    stop(daemon.process)
    shutil.rmtree(daemon.socket_path.parent, ignore_errors=True)


def p2pd_idle(alpha: Daemon, bravo: Daemon, seconds: float) -> dict[str, Any]:
    """Once they see each other: alpha's RSS with 2 members, and its idle CPU rate
    (so that a churn window's CPU can be read net of it)."""
    deadline = time.monotonic() + 60
    while alpha.status()["peers"] < 1 or bravo.status()["peers"] < 1:
        if time.monotonic() > deadline:
            raise SystemExit("scale: the two p2pd did not see each other within 60 s")
        time.sleep(0.2)
    time.sleep(2)
    before = cpu_seconds(alpha.process.pid)
    time.sleep(seconds)
    idle = (cpu_seconds(alpha.process.pid) - before) / seconds
    return {"rss_2_kib": memory_kib(alpha.process.pid), "idle_cpu_ms_per_s": 1000 * idle}


def p2pd_loaded(
    alpha: Daemon, bravo: Daemon, result: dict[str, Any], cpu: dict[str, Any], changes: int
) -> None:
    """Alpha among N members after a window with ``changes`` joins and leaves: its RSS,
    CPU per change, and bravo's first TLS exchanges with it and ``p2pctl ls alpha``."""
    seconds, cpu_pct = cpu["seconds"], cpu["p2pd"][0]
    net = cpu_pct / 100 - result["idle_cpu_ms_per_s"] / 1000
    result.update(
        rss_n_kib=memory_kib(alpha.process.pid),
        hwm_kib=memory_kib(alpha.process.pid, "VmHWM"),
        members_seen=alpha.status()["peers"],
        cpu_pct=cpu_pct,
        changes=changes,
        cpu_ms_per_change=(cpu_pct / 100 * seconds * 1000 / changes) if changes else None,
        net_cpu_ms_per_change=(net * seconds * 1000 / changes) if changes else None,
        handshakes=[],
    )
    for _ in range(3):
        try:
            handshake, answered, _line = bravo.tls_first_answer(alpha)
            result["handshakes"].append((handshake, answered))
        except OSError as exc:
            result["handshake_error"] = f"({exc})"
        time.sleep(1)
    started = time.perf_counter()
    try:
        ls = bravo.ctl("ls", "alpha")
        result["ls_ms"] = 1000 * (time.perf_counter() - started)
        if ls.returncode != 0:
            result["ls_error"] = f"(exit {ls.returncode}: {ls.stderr.strip()[:200]})"
    except subprocess.TimeoutExpired:
        result["ls_ms"], result["ls_error"] = None, "(timed out)"
    # `p2pctl --json peers`: every member, as the issue asks of 10 000 within 2 s.
    started = time.perf_counter()
    try:
        peers = alpha.ctl("--json", "peers")
        result["peers_ms"] = 1000 * (time.perf_counter() - started)
        result["peers_listed"] = len(json.loads(peers.stdout)) if peers.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError):
        result["peers_ms"], result["peers_listed"] = None, None


def newcomer_visible(
    alpha: Daemon,
    url: str,
    secret: str,
    spare: tuple[int, str, str] | None,
    key_pem: bytes,
    result: dict[str, Any],
    limit: float = 60,
) -> None:
    """Seconds from a new member's register until alpha's `p2pctl --json peers` lists it."""
    if spare is None:
        return
    started = time.monotonic()
    if register_one(url, secret, spare, key_pem) != 200:
        result["newcomer_error"] = "(its register failed)"
        return
    while time.monotonic() - started < limit:
        listed = alpha.ctl("--json", "peers")
        if listed.returncode == 0 and spare[1] in listed.stdout:
            result["newcomer_s"] = round(time.monotonic() - started, 2)
            return
        time.sleep(0.2)
    result["newcomer_s"], result["newcomer_error"] = None, f"(not listed within {limit:g} s)"
