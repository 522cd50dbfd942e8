"""What a search of many members costs the daemon that asks (issue 23).

.venv/bin/python -m bench.search_cost [--members 1000] [--files 10000] [--procs 2] [--repeat N]

A real registryd (memory store) and a real p2pd; ``--members`` light
stand-ins, each a TLS server of its own (its own port, its own certificate
issued by the network CA as p2pd's are, registered with the registry like
any member, requiring and pinning p2pd's certificate) speaking the real peer
protocol: ``GET /search`` parsed and matched by p2pd.peer.search over
``--files`` paths made like bench/search_match.py's.  The stand-ins of one
process share those paths (a file's sha256 differs among 7 variants across
members, so that grouping has work) and run in ``--procs`` processes
(one selector loop each, stdlib ssl).

Measured: the wall time of ``p2pctl --json search`` (process start
included), the counts it reports, p2pd's RSS before, at its peak during the
search (sampled every 5 ms) and 2 s after; and the same for a second search
(warm: the registry's pages and the allocator's arenas already used).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import selectors
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.scale import network_issuer
from bench.scale_procs import cpu_seconds, memory_kib, start_p2pd, start_registryd, stop, stop_p2pd
from bench.scale_procs import free_port as free_port_
from bench.scale_wire import AnswerReader, FastSigner, load_key, make_certificates
from bench.search_match import share
from p2pd.peer.search import QueryError, lowered_paths, match, parse_target

VARIANTS = 7
HEAD_LIMIT = 16 * 1024


@dataclass(frozen=True, slots=True)
class Entry:
    path: str
    size: int
    mtime: float
    sha256: str


class MemberFiles(Sequence[Entry]):
    """One stand-in's index: the process's shared paths, this member's variants of them."""

    def __init__(self, paths: list[str], sizes: list[int], variant: int) -> None:
        self._paths, self._sizes, self._variant = paths, sizes, variant

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        digest = hashlib.sha256(f"{index}:{self._variant}".encode()).hexdigest()
        return Entry(self._paths[index], self._sizes[index], 1764441600.0, digest)


# -- the stand-ins' process ------------------------------------------------------------


def stand_ins(spec: dict[str, Any]) -> None:
    """Serve the members of ``spec`` until killed: one selector loop, non-blocking
    stdlib TLS sockets (the handshake in C, without an event loop's Python buffers)."""
    entries = share(spec["files"])
    paths = [e.path for e in entries]
    sizes = [e.size for e in entries]
    lowered = lowered_paths(entries)
    selector = selectors.DefaultSelector()
    ports = []
    for index, cert_path in spec["members"]:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(cert_path, spec["key"])
        context.verify_mode = ssl.CERT_REQUIRED
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        context.load_verify_locations(cadata=spec["trust"])
        listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        listener.setblocking(False)
        files = MemberFiles(paths, sizes, index % VARIANTS)
        selector.register(listener, selectors.EVENT_READ, ("listen", context, files))
        ports.append(listener.getsockname()[1])
    print(json.dumps(ports), flush=True)
    heads: dict[int, bytes] = {}
    while True:
        for key, _ in selector.select():
            kind, context, files = key.data
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if kind == "listen":
                try:
                    raw, _ = sock.accept()
                except BlockingIOError:
                    continue
                raw.setblocking(False)
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                tls = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
                selector.register(tls, selectors.EVENT_READ, ("handshake", context, files))
                continue
            assert isinstance(sock, ssl.SSLSocket)
            try:
                if kind == "handshake":
                    sock.do_handshake()
                    selector.modify(sock, selectors.EVENT_READ, ("read", context, files))
                    continue
                data = sock.recv(HEAD_LIMIT)
                head = heads.pop(sock.fileno(), b"") + data
                if data and b"\r\n\r\n" not in head and len(head) < HEAD_LIMIT:
                    heads[sock.fileno()] = head
                    continue
                if data:
                    sock.setblocking(True)  # a few KiB: the kernel takes them at once
                    sock.sendall(answer(head, files, lowered))
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                continue
            except (OSError, ValueError, IndexError):
                pass
            heads.pop(sock.fileno(), None)
            selector.unregister(sock)
            sock.close()


def answer(head: bytes, files: MemberFiles, lowered: list[str]) -> bytes:
    target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode("latin-1")
    try:
        query = parse_target(target)
    except QueryError as exc:
        return response(400, {"error": "bad query", "message": str(exc)})
    found, more = match(files, query, lowered=lowered)
    body = {"generation": 1, "files": [vars_of(e) for e in found], "more": more}
    return response(200, body)


def vars_of(entry: Entry) -> dict[str, Any]:
    return {"path": entry.path, "size": entry.size, "mtime": entry.mtime, "sha256": entry.sha256}


def response(status: int, body: dict[str, Any]) -> bytes:
    data = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


# -- the orchestrator ----------------------------------------------------------------


def register(url: str, secret: str, member_id: str, pem: str, port: int, key_pem: bytes) -> int:
    body = json.dumps(
        {
            "id": member_id,
            "name": f"standin-{port}",
            "cert": pem,
            "port": port,
            "addresses": [f"127.0.0.1:{port}"],
        }
    ).encode()
    host, _, registry_port = url.removeprefix("http://").partition(":")
    raw, _ = FastSigner(secret).request(
        "POST", "/register", body, host, time.time(), (member_id, load_key(key_pem))
    )
    reader = AnswerReader()
    with socket.create_connection((host, int(registry_port)), timeout=30) as sock:
        sock.sendall(raw)
        while (got := reader.next()) is None:
            data = sock.recv(65536)
            if not data:
                return 0
            reader.feed(data)
    return got.status


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, memory_kib(self.pid))
            time.sleep(0.005)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(
    daemon: Any, query: list[str], timeout: float, others: Sequence[int] = ()
) -> dict[str, Any]:
    before = memory_kib(daemon.process.pid)
    cpu_before = cpu_seconds(daemon.process.pid)
    others_before = sum(cpu_seconds(pid) for pid in others)
    with RssSampler(daemon.process.pid) as sampler:
        started = time.perf_counter()
        result = daemon.ctl("--json", "search", *query, "--timeout", str(timeout), timeout=120)
        wall = time.perf_counter() - started
    cpu = cpu_seconds(daemon.process.pid) - cpu_before
    others_cpu = sum(cpu_seconds(pid) for pid in others) - others_before
    time.sleep(2)
    after = memory_kib(daemon.process.pid)
    if result.returncode != 0:
        raise SystemExit(f"search failed: {result.stderr}")
    document = json.loads(result.stdout)
    matches = sum(len(r["members"]) for r in document["results"])
    return {
        "wall_s": round(wall, 3),
        "p2pd_cpu_s": round(cpu, 2),
        "stand_ins_cpu_s": round(others_cpu, 2),
        "rss_before_mib": round(before / 1024, 1),
        "rss_peak_mib": round(sampler.peak / 1024, 1),
        "rss_growth_mib": round((sampler.peak - before) / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "contents": len(document["results"]),
        "matches_kept": matches,
        **{k: document[k] for k in ("members", "asked", "answered", "silent", "refused")},
        "partial": document["partial"],
    }


def run(opts: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="search-cost-"))
    secret = "search-" + secrets.token_hex(12)
    registry = start_registryd(
        workdir, secret, "memory", free_port_(), {"REGISTRYD_PEER_TTL": "3600"}
    )
    procs: list[subprocess.Popen[str]] = []
    daemon = None
    try:
        daemon = start_p2pd(workdir, "searcher", secret, registry.url)
        pairs, key_pem = make_certificates(
            opts.members, secrets.token_hex(4), network_issuer(secret)
        )
        key_path = workdir / "standins.key"
        key_path.write_bytes(key_pem)
        cert_paths = []
        for index, (_, pem) in enumerate(pairs):
            path = workdir / f"standin-{index}.crt"
            path.write_text(pem)
            cert_paths.append(str(path))
        ports: list[int] = []
        for proc in range(opts.procs):
            mine = [(i, cert_paths[i]) for i in range(proc, opts.members, opts.procs)]
            spec = {
                "files": opts.files,
                "key": str(key_path),
                "trust": daemon.cert_pem,
                "members": mine,
            }
            spec_path = workdir / f"spec-{proc}.json"
            spec_path.write_text(json.dumps(spec))
            process = subprocess.Popen(
                [sys.executable, "-m", "bench.search_cost", "--serve", str(spec_path)],
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(process)
        by_index: dict[int, int] = {}
        for proc, process in enumerate(procs):
            assert process.stdout is not None
            got = json.loads(process.stdout.readline())
            for i, port in zip(range(proc, opts.members, opts.procs), got, strict=True):
                by_index[i] = port
        ports = [by_index[i] for i in range(opts.members)]
        started = time.perf_counter()
        for (member_id, pem), port in zip(pairs, ports, strict=True):
            status = register(registry.url, secret, member_id, pem, port, key_pem)
            if status != 200:
                raise SystemExit(f"register answered {status}")
        print(f"{opts.members} stand-ins registered in {time.perf_counter() - started:.1f} s")
        time.sleep(2)
        pids = [process.pid for process in procs]
        results: dict[str, Any] = {"members": opts.members, "files_each": opts.files}
        query = [opts.query]
        results["first"] = measure(daemon, query, opts.timeout, pids)
        print("first search:", json.dumps(results["first"]))
        results["second"] = measure(daemon, query, opts.timeout, pids)
        print("second search:", json.dumps(results["second"]))
        walls = [results["first"]["wall_s"], results["second"]["wall_s"]]
        for _ in range(opts.repeat):
            walls.append(measure(daemon, query, opts.timeout, pids)["wall_s"])
        walls.sort()
        results["walls"] = walls
        print(f"{len(walls)} searches: wall min {walls[0]} s, median {walls[len(walls) // 2]} s")
        if opts.wide:
            results["wide"] = measure(daemon, [opts.wide], opts.timeout, pids)
            print(f"wide search {opts.wide!r}:", json.dumps(results["wide"]))
        return results
    finally:
        for process in procs:
            process.kill()
            process.wait()
        if daemon is not None:
            stop_p2pd(daemon)
        stop(registry.process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--query", default="debian42 iso")
    parser.add_argument("--wide", default="", help="another query, e.g. one matching 100+ each")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=0, help="more searches, for the spread")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.serve:
        stand_ins(json.loads(Path(opts.serve).read_text()))
        return 0
    print(json.dumps(run(opts), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
