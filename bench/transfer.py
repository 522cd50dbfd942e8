"""A 1 GiB fetch between two p2pd against nginx + curl + openssl on the same file, in one run.

Reference (what a user who wants a verified copy runs): a private nginx (its
own prefix and config in a temp dir, TLS 1.3, an EC P-256 certificate,
sendfile) serves the file to ``curl -sk | openssl dgst -sha256``, hashing as
the bytes arrive (OpenSSL's SHA-256 uses the CPU's SHA extensions).  Also
``curl | tee FILE | openssl dgst``, the like for like that writes the file
too.  Ours: ``p2pctl fetch`` between two p2pd on loopback (mutual TLS 1.3,
sha256 verified while receiving, fsync, rename).  A warm-up of each, then
rounds alternating the three; the medians are compared (ratio = reference
time / ours: >= 1 is as fast as nginx).  Also the receiving daemon's CPU per
GiB and the RSS of both daemons during our transfers.

    .venv/bin/python bench/transfer.py [--size-mib N] [--runs N]

Needs nginx, curl and openssl (apt-get install nginx-light curl openssl).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

BIN = Path(sys.executable).parent
SECRET = "bench-secret-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_random(path: Path, size: int) -> None:
    block = os.urandom(1024 * 1024)
    with path.open("wb") as f:
        for i in range(size // len(block)):
            # Vary the blocks cheaply so that nothing can deduplicate them.
            f.write(i.to_bytes(8, "little") + block[8:])


def tls_files(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


NGINX_CONF = """
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log;
daemon off;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_protocols TLSv1.3;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {root};
    }}
}}
"""


@contextlib.contextmanager
def nginx(root: Path, data: Path) -> Iterator[str]:
    """A private nginx (TLS 1.3, P-256, sendfile) serving ``data``; yields its URL."""
    prefix = root / "nginx"
    (prefix / "logs").mkdir(parents=True)
    cert, key = tls_files(prefix)
    port = free_port()
    (prefix / "nginx.conf").write_text(
        NGINX_CONF.format(prefix=prefix, port=port, cert=cert, key=key, root=data.parent)
    )
    server = subprocess.Popen(
        ["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf")], stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: port_open(port), "nginx to listen")
        yield f"https://127.0.0.1:{port}/{data.name}"
    finally:
        server.send_signal(signal.SIGQUIT)
        server.wait(timeout=10)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def reference_run(url: str, out: Path | None) -> float:
    """``curl | openssl dgst -sha256`` (hashing as it arrives), with ``tee out`` if given."""
    curl = f"curl -sk --tlsv1.3 {shlex.quote(url)}"
    tee = f" | tee {shlex.quote(str(out))}" if out is not None else ""
    if out is not None:
        out.unlink(missing_ok=True)
    started = time.perf_counter()
    subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"{curl}{tee} | openssl dgst -sha256"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append(rss_kib(self.pid))
            self.stop.wait(0.05)


def start_peer(
    root: Path, name: str, registry: str, share: Path, profile: Path | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    """A p2pd sharing ``share``; with ``profile``, under cProfile into that folder."""
    folder = root / name
    (folder / "downloads").mkdir(parents=True)
    socket_path = folder / "control.sock"
    config = folder / "p2pd.toml"
    config.write_text(
        f'name = "{name}"\nshare_dir = "{share}"\ndownload_dir = "{folder / "downloads"}"\n'
        f'state_dir = "{folder / "state"}"\ncontrol_socket = "{socket_path}"\n'
        f'listen = "127.0.0.1:{free_port()}"\nregistries = ["{registry}"]\n'
        f'secret = "{SECRET}"\nheartbeat_interval = 1\n'
    )
    command = [str(BIN / "p2pd")]
    if profile is not None:
        command = [sys.executable, "-m", "cProfile", "-o", str(profile / f"{name}.prof")]
        command += ["-m", "p2pd.main"]
    process = subprocess.Popen(
        [*command, "--config", str(config)], stderr=(folder / "log").open("w")
    )
    return process, socket_path


def start_registry() -> tuple[subprocess.Popen[bytes], str]:
    """A registryd on a free loopback port (memory store) and its URL."""
    port = free_port()
    env = {**os.environ, "REGISTRYD_SECRET": SECRET, "REGISTRYD_LISTEN": f"127.0.0.1:{port}"}
    process = subprocess.Popen(
        [str(BIN / "registryd"), "--config", os.devnull], env=env, stderr=subprocess.DEVNULL
    )
    return process, f"http://127.0.0.1:{port}"


def ctl(socket_path: Path, *args: str) -> str:
    return subprocess.run(
        [str(BIN / "p2pctl"), "--socket", str(socket_path), *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def wait_for(check: object, what: str) -> None:
    for _ in range(600):
        try:
            if check():  # type: ignore[operator]
                return
        except subprocess.CalledProcessError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"bench: timed out waiting for {what}")


class Peers:
    """A registryd and two p2pd (sender shares ``data``), up for the whole benchmark."""

    def __init__(self, root: Path, data: Path) -> None:
        self.root, self.data = root, data

    def __enter__(self) -> Peers:
        self.registry, url = start_registry()
        empty = self.root / "empty-share"
        empty.mkdir()
        self.sender, self.sender_sock = start_peer(self.root, "sender", url, self.data.parent)
        self.receiver, self.receiver_sock = start_peer(self.root, "receiver", url, empty)
        peers_of = self.receiver_sock, self.sender_sock
        wait_for(lambda: '"sender"' in ctl(peers_of[0], "--json", "peers"), "the peers to meet")
        wait_for(lambda: '"receiver"' in ctl(peers_of[1], "--json", "peers"), "the peers to meet")
        # A file written just now is indexed once it stopped changing (p2pd waits for that).
        name = json.dumps(self.data.name)
        wait_for(lambda: name in ctl(self.sender_sock, "--json", "shared"), "the file to be shared")
        self.idle = {"sender": rss_kib(self.sender.pid), "receiver": rss_kib(self.receiver.pid)}
        self.samplers = {
            "sender": RssSampler(self.sender.pid),
            "receiver": RssSampler(self.receiver.pid),
        }
        for sampler in self.samplers.values():
            sampler.start()
        return self

    def fetch(self) -> tuple[float, float, float]:
        """One ``p2pctl fetch``: wall seconds, then the receiver's and the sender's CPU seconds."""
        landed = self.root / "receiver" / "downloads" / self.data.name
        landed.unlink(missing_ok=True)
        receiver, sender = cpu_seconds(self.receiver.pid), cpu_seconds(self.sender.pid)
        started = time.perf_counter()
        ctl(self.receiver_sock, "fetch", "sender", self.data.name)
        return (
            time.perf_counter() - started,
            cpu_seconds(self.receiver.pid) - receiver,
            cpu_seconds(self.sender.pid) - sender,
        )

    def rss(self) -> dict[str, tuple[int, int]]:
        for sampler in self.samplers.values():
            sampler.stop.set()
            sampler.join()
        return {name: (self.idle[name], max(s.samples)) for name, s in self.samplers.items()}

    def __exit__(self, *exc: object) -> None:
        for process in (self.receiver, self.sender, self.registry):
            process.send_signal(signal.SIGTERM)
        for process in (self.receiver, self.sender, self.registry):
            process.wait(timeout=15)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for tool in ("nginx", "curl", "openssl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: {tool} is missing: apt-get install nginx-light curl openssl")
    reference: list[float] = []
    writing: list[float] = []
    ours: list[float] = []
    our_cpu: list[float] = []
    sender_cpu: list[float] = []
    with tempfile.TemporaryDirectory(prefix="p2pd-bench-") as tmp:
        root = Path(tmp)
        share = root / "share"
        share.mkdir()
        data = share / "data.bin"
        write_random(data, args.size_mib * 1024 * 1024)
        # nginx's worker runs unprivileged: let it read the file.
        for path, mode in ((root, 0o755), (share, 0o755), (data, 0o644)):
            path.chmod(mode)
        copy = root / "curl.out"
        with nginx(root, data) as url, Peers(root, data) as peers:
            # A warm-up of each (page cache, TLS sessions, lazy imports), not counted.
            reference_run(url, None)
            peers.fetch()
            # Alternating, so that a noisy neighbour slows all three alike.
            for _ in range(args.runs):
                reference.append(reference_run(url, None))
                writing.append(reference_run(url, copy))
                wall, cpu, sent_cpu = peers.fetch()
                ours.append(wall)
                our_cpu.append(cpu)
                sender_cpu.append(sent_cpu)
            rss = peers.rss()
    ref, tee, our = (statistics.median(x) for x in (reference, writing, ours))
    mib, gib = args.size_mib, args.size_mib / 1024
    print(f"file: {mib} MiB in {root.parent}, warm-up then median of {args.runs} alternating runs")
    print(f"reference nginx + curl | openssl dgst:         {ref:6.2f} s  ({mib / ref:5.0f} MiB/s)")
    print(f"like for like nginx + curl | tee | openssl:    {tee:6.2f} s  ({mib / tee:5.0f} MiB/s)")
    print(f"ours p2pctl fetch (mTLS, verified, fsync):     {our:6.2f} s  ({mib / our:5.0f} MiB/s)")
    verdict = "met" if ref / our >= 1.0 else "missed"
    print(f"ratio reference/ours: {ref / our:.2f}x (goal >= 1.0: {verdict}); ", end="")
    print(f"against the one that also writes: {tee / our:.2f}x")
    cpu = statistics.median(our_cpu) / gib
    print(f"receiver CPU: {cpu:.2f} s per GiB (goal <= 2.0: {'met' if cpu <= 2.0 else 'missed'})")
    print(f"sender CPU: {statistics.median(sender_cpu) / gib:.2f} s per GiB")
    for name, (idle, peak) in rss.items():
        growth = (peak - idle) / 1024
        print(
            f"RSS {name}: idle {idle / 1024:.0f} MiB, max {peak / 1024:.0f} MiB "
            f"(+{growth:.1f} MiB; goal <= +8: {'ok' if growth <= 8 else 'MISSED'})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
