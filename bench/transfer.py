"""A 1 GiB fetch between two p2pd against nginx + curl on the same file, in one run.

Reference: a private nginx (its own prefix and config in a temp dir, TLS 1.3,
an EC P-256 certificate, sendfile) serves the file to ``curl -k``, then
``sha256sum`` checks it.  Ours: ``p2pctl fetch`` between two p2pd on loopback
(mutual TLS 1.3, sha256 verified while receiving, fsync, rename).  Each is the
median of several runs; the ratio is reference time / our time (>= 1 is as
fast as nginx).  RSS of both daemons is sampled during our transfers.

    .venv/bin/python bench/transfer.py [--size-mib N] [--runs N]

Needs nginx and curl (apt-get install nginx-light curl).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
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


def nginx_runs(root: Path, data: Path, runs: int) -> list[float]:
    prefix = root / "nginx"
    (prefix / "logs").mkdir(parents=True)
    cert, key = tls_files(prefix)
    port = free_port()
    (prefix / "nginx.conf").write_text(
        f"""
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
        root {data.parent};
    }}
}}
"""
    )
    server = subprocess.Popen(
        ["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf")], stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(0.5)
        out = root / "curl.out"
        times = []
        for _ in range(runs):
            out.unlink(missing_ok=True)
            started = time.perf_counter()
            subprocess.run(
                [
                    "curl",
                    "-sk",
                    "--tlsv1.3",
                    "-o",
                    str(out),
                    f"https://127.0.0.1:{port}/{data.name}",
                ],
                check=True,
            )
            subprocess.run(["sha256sum", str(out)], check=True, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - started)
        return times
    finally:
        server.send_signal(signal.SIGQUIT)
        server.wait(timeout=10)


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
    root: Path, name: str, registry: str, share: Path
) -> tuple[subprocess.Popen[bytes], Path]:
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
    process = subprocess.Popen(
        [str(BIN / "p2pd"), "--config", str(config)], stderr=(folder / "log").open("w")
    )
    return process, socket_path


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


def p2pd_runs(root: Path, data: Path, runs: int) -> tuple[list[float], dict[str, tuple[int, int]]]:
    reg_port = free_port()
    env = {**os.environ, "REGISTRYD_SECRET": SECRET, "REGISTRYD_LISTEN": f"127.0.0.1:{reg_port}"}
    registry = subprocess.Popen(
        [str(BIN / "registryd"), "--config", os.devnull], env=env, stderr=subprocess.DEVNULL
    )
    empty = root / "empty-share"
    empty.mkdir()
    sender, sender_sock = start_peer(root, "sender", f"http://127.0.0.1:{reg_port}", data.parent)
    receiver, receiver_sock = start_peer(root, "receiver", f"http://127.0.0.1:{reg_port}", empty)
    try:
        wait_for(lambda: '"sender"' in ctl(receiver_sock, "--json", "peers"), "the peers to meet")
        wait_for(lambda: '"receiver"' in ctl(sender_sock, "--json", "peers"), "the peers to meet")
        idle = {"sender": rss_kib(sender.pid), "receiver": rss_kib(receiver.pid)}
        samplers = {"sender": RssSampler(sender.pid), "receiver": RssSampler(receiver.pid)}
        for sampler in samplers.values():
            sampler.start()
        times = []
        landed = root / "receiver" / "downloads" / data.name
        for _ in range(runs):
            landed.unlink(missing_ok=True)
            started = time.perf_counter()
            ctl(receiver_sock, "fetch", "sender", data.name)
            times.append(time.perf_counter() - started)
        for sampler in samplers.values():
            sampler.stop.set()
            sampler.join()
        rss = {name: (idle[name], max(s.samples)) for name, s in samplers.items()}
        return times, rss
    finally:
        for process in (receiver, sender, registry):
            process.send_signal(signal.SIGTERM)
        for process in (receiver, sender, registry):
            process.wait(timeout=15)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for tool in ("nginx", "curl", "sha256sum"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: {tool} is missing: apt-get install nginx-light curl")
    with tempfile.TemporaryDirectory(prefix="p2pd-bench-") as tmp:
        root = Path(tmp)
        share = root / "share"
        share.mkdir()
        data = share / "data.bin"
        write_random(data, args.size_mib * 1024 * 1024)
        # nginx's worker runs unprivileged: let it read the file.
        for path, mode in ((root, 0o755), (share, 0o755), (data, 0o644)):
            path.chmod(mode)
        reference = nginx_runs(root, data, args.runs)
        ours, rss = p2pd_runs(root, data, args.runs)
    ref, our = statistics.median(reference), statistics.median(ours)
    mib = args.size_mib
    print(f"file: {mib} MiB, median of {args.runs} runs, {os.cpu_count()} cores")
    print(f"reference nginx + curl -k + sha256sum: {ref:6.2f} s  ({mib / ref:6.0f} MiB/s)")
    print(f"ours p2pctl fetch (mTLS, verified):    {our:6.2f} s  ({mib / our:6.0f} MiB/s)")
    verdict = "ok" if ref / our >= 1.0 else ("below goal" if ref / our >= 0.7 else "DEFECT (< 0.7)")
    print(f"ratio reference/ours: {ref / our:.2f}x  (goal >= 1.0: {verdict})")
    for name, (idle, peak) in rss.items():
        growth = (peak - idle) / 1024
        print(
            f"RSS {name}: idle {idle / 1024:.0f} MiB, max {peak / 1024:.0f} MiB "
            f"(+{growth:.1f} MiB; goal <= +8: {'ok' if growth <= 8 else 'MISSED'})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
