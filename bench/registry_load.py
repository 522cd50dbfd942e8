"""Load benchmark of the real registryd: signed heartbeats/s with latency, and /clients size.

Starts registryd (memory store) on loopback, registers many members, then
sends separately signed heartbeats (each its own nonce and ``created``) over
keep-alive connections.  The requests are signed before the timed phase so
that the load generator, which shares this 2-core machine, measures the
server rather than its own signing; the phase is short enough for every
``created`` to stay inside the registry's ±60 s window.

Besides throughput and latency it reports the registry process's own CPU
time per heartbeat (user + system, from /proc), which does not depend on
how much CPU the load generator takes from the same machine.

    .venv/bin/python bench/registry_load.py [--quick] [--heartbeats-only] [--profile OUT]

``--profile OUT`` runs registryd under cProfile and writes its stats to OUT
(``python -m pstats OUT``); the CPU figures are then the profiler's, inflated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from p2pcommon.identity import peer_id_from_pem
from p2pcommon.signing.member_proof import (
    add_member_signature,
    created_of,
    member_params,
    sign_base,
    signature_base,
)
from p2pcommon.signing.signer import Signer
from p2pd.tls.identity import build_certificate


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def certificates(count: int, key: ec.EllipticCurvePrivateKey) -> list[str]:
    # One key, many certificates: each has its own serial, hence its own id.
    return [
        build_certificate(key).public_bytes(serialization.Encoding.PEM).decode()
        for _ in range(count)
    ]


def raw_request(signer: Signer, method: str, path: str, body: bytes) -> bytes:
    headers, _ = signer.sign_request(method, path, body, now=time.time())
    lines = [f"{method} {path} HTTP/1.1", "Host: registry", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_answer(stream: trio.SocketStream, buffer: bytearray) -> int:
    """Read one answer; returns its status. ``buffer`` keeps bytes of the next one."""
    while b"\r\n\r\n" not in buffer:
        data = await stream.receive_some(65536)
        if not data:
            raise ConnectionError("registry closed the connection")
        buffer += data
    head_end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:head_end]).decode("latin-1")
    status = int(head.split(" ", 2)[1])
    length = 0
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
    while len(buffer) < head_end + length:
        data = await stream.receive_some(65536)
        if not data:
            raise ConnectionError("registry closed the connection")
        buffer += data
    del buffer[: head_end + length]
    return status


async def heartbeat_phase(
    port: int, requests: list[bytes], connections: int
) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    failures = 0
    queue = iter(requests)

    async def worker() -> None:
        nonlocal failures
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buffer = bytearray()
        async with stream:
            for request in queue:
                started = time.perf_counter()
                await stream.send_all(request)
                status = await read_answer(stream, buffer)
                latencies.append(time.perf_counter() - started)
                failures += status != 200

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(worker)
    return time.perf_counter() - started, latencies, failures


def process_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds (user, system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3.
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def register_all(
    url: str, signer: Signer, certs: list[str], key: ec.EllipticCurvePrivateKey
) -> list[tuple[str, str]]:
    """Register each certificate, proven by ``key`` (docs/protocol.md §2.4): (id, lease)s."""
    members = []
    with httpx.Client(base_url=url) as http:
        for index, cert in enumerate(certs):
            member_id = peer_id_from_pem(cert)
            body = json.dumps(
                {"id": member_id, "name": f"peer-{index}", "cert": cert, "port": 7070}
            ).encode()
            headers, nonce = signer.sign_request("POST", "/register", body, now=time.time())
            params = member_params(member_id, created_of(headers["Signature-Input"]), nonce)
            base = signature_base("POST", "/register", headers["Content-Digest"], params)
            add_member_signature(headers, params, sign_base(key, base))
            answer = http.post("/register", content=body, headers=headers)
            if answer.status_code != 200:
                raise SystemExit(f"bench: register refused: {answer.status_code} {answer.text}")
            members.append((member_id, answer.json()["lease"]))
    return members


def time_clients(url: str, signer: Signer, runs: int) -> tuple[list[float], int, int]:
    times, size, count = [], 0, 0
    with httpx.Client(base_url=url) as http:
        for _ in range(runs):
            headers, nonce = signer.sign_request("GET", "/clients", b"", now=time.time())
            started = time.perf_counter()
            answer = http.get("/clients", headers=headers)
            count = len(json.loads(answer.content)["clients"])
            times.append(time.perf_counter() - started)
            size = len(answer.content)
            signer.verify_response(
                answer.status_code,
                answer.headers.multi_items(),
                answer.content,
                nonce=nonce,
                now=time.time(),
            )
    return times, size, count


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument(
        "--heartbeats-only", action="store_true", help="skip the GET /clients measurement"
    )
    parser.add_argument("--profile", metavar="OUT", help="run registryd under cProfile")
    args = parser.parse_args()
    members, requests_per_level, levels, list_members = (
        (50, 500, (8,), 500) if args.quick else (1000, 12_000, (16, 64), 10_000)
    )
    secret = secrets.token_hex(16)
    signer = Signer(secret)
    port = free_port()
    env = {
        **os.environ,
        "REGISTRYD_SECRET": secret,
        "REGISTRYD_LISTEN": f"127.0.0.1:{port}",
        "REGISTRYD_PEER_TTL": "600",
        # Every member here registers from 127.0.0.1: no limit on new ids per source.
        "REGISTRYD_NEW_MEMBER_RATE": "0",
    }
    env.pop("NOTIFY_SOCKET", None)
    # As the registryd command does, so that PYTHONPATH may pick the code to measure.
    command = [sys.executable, "-m", "registryd.main"]
    if args.profile:
        command = [sys.executable, "-m", "cProfile", "-o", args.profile, "-m", "registryd.main"]
    server = subprocess.Popen(
        [*command, "--config", os.devnull],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(url + "/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}")
        key = ec.generate_private_key(ec.SECP256R1())
        certs = certificates(members if args.heartbeats_only else list_members, key)
        registered = register_all(url, signer, certs[:members], key)
        print(f"registered {len(registered)} members")
        for connections in levels:
            bodies = [
                json.dumps(
                    dict(zip(("id", "lease"), registered[i % len(registered)], strict=True))
                ).encode()
                for i in range(requests_per_level)
            ]
            presign_started = time.perf_counter()
            requests = [raw_request(signer, "POST", "/heartbeat", b) for b in bodies]
            presign = time.perf_counter() - presign_started
            cpu_before = process_cpu(server.pid)
            elapsed, latencies, failures = trio.run(heartbeat_phase, port, requests, connections)
            user, system = (
                (after - before) / len(latencies)
                for after, before in zip(process_cpu(server.pid), cpu_before, strict=True)
            )
            rate = len(latencies) / elapsed
            p50, p99 = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000
            print(
                f"heartbeats, {connections:3d} connections: {rate:7.0f}/s  "
                f"p50 {p50:5.1f} ms  p99 {p99:5.1f} ms  non-200: {failures}  "
                f"registry CPU {(user + system) * 1000:.3f} ms/heartbeat "
                f"({user * 1000:.3f} user + {system * 1000:.3f} system)  "
                f"(signed in {presign:.1f} s beforehand)  "
                f"target >= 2000/s at p99 < 50 ms: {verdict(rate >= 2000 and p99 < 50)}"
            )
        if args.heartbeats_only:
            return 0
        register_all(url, signer, certs[members:], key)
        times, size, count = time_clients(url, signer, 5 if args.quick else 20)
        median, worst = statistics.median(times) * 1000, max(times) * 1000
        print(
            f"GET /clients with {count} members: median {median:.0f} ms, max {worst:.0f} ms, "
            f"{size / 1e6:.1f} MB, answers verified  "
            f"target < 100 ms: {verdict(median < 100)}"
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
