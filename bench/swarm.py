"""One file from three members at once, against one member alone and aria2c on three nginx.

Three p2pd members, each limited to 20 MiB/s of upload (``upload_rate_limit``),
share the same 1 GiB file; a fourth fetches it, in one run:

- **alone**: from one of them while it is the only member whose listing the
  fetcher keeps (the whole-file path);
- **swarm**: from all three (the fetcher keeps their listings): goal ≥ 2.5×
  faster than alone (2.8× hoped for);
- **anchor**: ``aria2c -s3`` over three private nginx (TLS 1.3, ``limit_rate
  20m``) serving the same file, without and with ``--checksum=sha-256=…``;
- **resume**: the swarm's download ``kill -9``-ed half way, then restarted:
  the bytes each member sent in both halves (``served_bytes``) add up to
  about one file, since verified pieces are not fetched again;
- **liar**: one of the three replaced by a member whose copy was damaged on
  disk after indexing (one byte in every 8th piece): the file lands verified,
  the liar is named in the history, in ≤ 1.8× the honest swarm's time per MiB.

    TMPDIR=/dev/shm .venv/bin/python -m bench.swarm [--size-mib N]

Needs nginx and aria2c (apt-get install nginx-light aria2).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench.transfer import (
    BIN,
    SECRET,
    free_port,
    start_registry,
    tls_files,
    wait_for,
    write_random,
)

MiB = 1024 * 1024
RATE = 20 * MiB

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
        listen {host}:{port} ssl;
        ssl_protocols TLSv1.3;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        limit_rate 20m;
        root {root};
    }}
}}
"""


@contextmanager
def limited_nginx(prefix: Path, data: Path, host: str) -> Iterator[str]:
    """A private nginx at ``limit_rate 20m`` (per connection) serving ``data`` on ``host``
    (one loopback address each: aria2c's ``-x1`` counts connections per host)."""
    (prefix / "logs").mkdir(parents=True)
    cert, key = tls_files(prefix)
    port = free_port()
    (prefix / "nginx.conf").write_text(
        NGINX_CONF.format(prefix=prefix, host=host, port=port, cert=cert, key=key, root=data.parent)
    )
    server = subprocess.Popen(
        ["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf")], stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: listening(host, port), "nginx to listen")
        yield f"https://{host}:{port}/{data.name}"
    finally:
        server.send_signal(signal.SIGQUIT)
        server.wait(timeout=10)


def listening(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


class Member:
    """One p2pd, restartable with the same identity and state."""

    def __init__(self, root: Path, name: str, registry: str, share: Path, extra: str = "") -> None:
        self.name = name
        self.folder = root / name
        (self.folder / "downloads").mkdir(parents=True)
        self.socket = self.folder / "control.sock"
        self.config = self.folder / "p2pd.toml"
        self.config.write_text(
            f'name = "{name}"\nshare_dir = "{share}"\n'
            f'download_dir = "{self.folder / "downloads"}"\nstate_dir = "{self.folder / "state"}"\n'
            f'control_socket = "{self.socket}"\nlisten = "127.0.0.1:{free_port()}"\n'
            f'registries = ["{registry}"]\nsecret = "{SECRET}"\nheartbeat_interval = 1\n{extra}'
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.folder / "log").open("a")
        self.process = subprocess.Popen(
            [str(BIN / "p2pd"), "--config", str(self.config)], stderr=log
        )
        wait_for(lambda: self.ctl("status"), f"{self.name} to start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)
        self.process = None

    def ctl(self, *args: str) -> Any:
        out = subprocess.run(
            [str(BIN / "p2pctl"), "--socket", str(self.socket), "--json", *args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return json.loads(out)

    def sees(self, names: list[str]) -> None:
        wait_for(
            lambda: set(names) <= {p["name"] for p in self.ctl("peers")},
            f"{self.name} to see {names}",
        )

    def keeps_listing(self, name: str, sha: str) -> None:
        wait_for(
            lambda: any(f["sha256"] == sha and f.get("root") for f in self.ctl("ls", name)),
            f"{name} to list the file",
        )

    def served(self) -> int:
        return int(self.ctl("status")["served_bytes"])


def fetch(fetcher: Member, source: str, name: str) -> tuple[float, dict[str, Any]]:
    (fetcher.folder / "downloads" / name).unlink(missing_ok=True)
    started = time.perf_counter()
    outcome: dict[str, Any] = fetcher.ctl("fetch", source, name)
    seconds = time.perf_counter() - started
    if outcome["status"] != "ok":
        raise SystemExit(f"bench: the fetch failed: {outcome}")
    return seconds, outcome


def aria2c(urls: list[str], out: Path, sha: str | None) -> float:
    out.unlink(missing_ok=True)
    command = ["aria2c", "-q", "-s3", "-x1", "--check-certificate=false", "--file-allocation=none"]
    command += ["--allow-overwrite=true", "-d", str(out.parent), "-o", out.name]
    if sha is not None:
        command.append(f"--checksum=sha-256={sha}")
    started = time.perf_counter()
    subprocess.run([*command, *urls], check=True)
    seconds = time.perf_counter() - started
    out.unlink()
    return seconds


def damage_in_place(path: Path, piece_size: int, every: int) -> None:
    """One byte in every ``every``-th piece, same size and mtime (as a disk damages it)."""
    before = path.stat()
    with path.open("r+b") as damaged:
        for at in range(piece_size // 2, before.st_size, piece_size * every):
            damaged.seek(at)
            byte = damaged.read(1)
            damaged.seek(at)
            damaged.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def keep_log(log: Path, to: Path) -> None:
    to.parent.mkdir(parents=True, exist_ok=True)
    if log.exists():
        shutil.copyfile(log, to)


def sources_line(outcome: dict[str, Any]) -> str:
    return ", ".join(
        f"{s['name']} {s['bytes'] / MiB:.0f} MiB"
        + (f" LIAR ({s['bad_pieces']} bad pieces, {s['wasted_bytes'] / MiB:.1f} MiB wasted)"
           if s["liar"] else "")
        for s in outcome["sources"]
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--logs", type=Path, help="copy each daemon's log into this folder")
    args = parser.parse_args()
    for tool in ("nginx", "aria2c"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: {tool} is missing: apt-get install nginx-light aria2")
    mib = args.size_mib
    limit = f"upload_rate_limit = {RATE}\n"
    with tempfile.TemporaryDirectory(prefix="p2pd-swarm-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        share = root / "share"
        share.mkdir()
        data = share / "data.bin"
        write_random(data, mib * MiB)
        with data.open("rb") as f:
            sha = hashlib.file_digest(f, "sha256").hexdigest()
        for path, mode in ((root, 0o755), (share, 0o755), (data, 0o644)):
            path.chmod(mode)
        registry, url = start_registry()
        stack.callback(registry.wait, timeout=15)
        stack.callback(registry.send_signal, signal.SIGTERM)
        honest = [Member(root, n, url, share, limit) for n in ("anna", "bert", "cleo")]
        if args.logs is not None:
            for name in ("anna", "bert", "cleo", "dora", "erin"):
                stack.callback(keep_log, root / name / "log", args.logs / f"{name}.log")
        fetcher = Member(root, "dora", url, root / "dora-share")
        (root / "dora-share").mkdir()
        for member in [*honest, fetcher]:
            member.start()
            stack.callback(member.stop)
        fetcher.sees([m.name for m in honest])

        # Alone: only anna's listing is kept, so one member and the whole-file path.
        fetcher.keeps_listing("anna", sha)
        alone, outcome = fetch(fetcher, "anna", data.name)
        assert len(outcome["sources"]) == 1, outcome["sources"]
        print(f"file: {mib} MiB; each member uploads at most {RATE // MiB} MiB/s")
        print(f"alone (one member, whole file):      {alone:6.2f} s ({mib / alone:5.1f} MiB/s)")

        for member in honest[1:]:
            fetcher.keeps_listing(member.name, sha)
        swarm, outcome = fetch(fetcher, "anna", data.name)
        ratio = alone / swarm
        verdict = "met" if ratio >= 2.5 else "MISSED"
        print(f"swarm (three members):               {swarm:6.2f} s ({mib / swarm:5.1f} MiB/s)")
        print(f"  {sources_line(outcome)}")
        print(f"  swarm vs alone: {ratio:.2f}x (goal >= 2.5, hoped 2.8: {verdict})")

        urls = [
            stack.enter_context(limited_nginx(root / f"nginx{i}", data, f"127.0.0.{i + 2}"))
            for i in range(3)
        ]
        plain = aria2c(urls, root / "aria2.out", None)
        checked = aria2c(urls, root / "aria2.out", sha)
        print(f"anchor aria2c -s3, 3 nginx at 20m:   {plain:6.2f} s ({mib / plain:5.1f} MiB/s)")
        print(f"  with --checksum=sha-256:           {checked:6.2f} s ({mib / checked:5.1f} MiB/s)")
        print(f"  ours vs aria2c with checksum: {checked / swarm:.2f}x (>= 1: as fast)")

        # Resume: kill -9 half way, restart, count what every member sent.
        landed = fetcher.folder / "downloads" / data.name
        landed.unlink()
        before = sum(m.served() for m in honest)
        started = time.perf_counter()
        transfer = fetcher.ctl("fetch", "--detach", "anna", data.name)["id"]

        def half_way() -> bool:
            found = [t for t in fetcher.ctl("downloads") if t["id"] == transfer]
            return bool(found) and found[0]["bytes_done"] >= mib * MiB // 2

        wait_for(half_way, "half of the file")
        fetcher.stop(signal.SIGKILL)
        time.sleep(1)  # the members notice and stop sending
        first = sum(m.served() for m in honest) - before
        fetcher.start()

        def landed_ok() -> bool:
            return any(r["id"] == transfer and r["status"] == "ok" for r in fetcher.ctl("history"))

        for _ in range(10):  # wait_for's 30 s, ten times over
            try:
                wait_for(landed_ok, "the resumed transfer")
                break
            except SystemExit:
                continue
        resumed = time.perf_counter() - started
        (record,) = [r for r in fetcher.ctl("history") if r["id"] == transfer]
        time.sleep(1)
        second = sum(m.served() for m in honest) - before - first
        print(
            f"resume after kill -9 at half: landed in {resumed:.2f} s (restart included); "
            f"the members sent {first / MiB:.1f} MiB before the kill and {second / MiB:.1f} MiB "
            f"after: {(first + second) / (mib * MiB):.3f} of the file in all"
        )
        print(f"  after the restart: {sources_line(record)}")

        # The liar: cleo leaves; erin, whose copy was damaged after indexing, joins.
        honest[2].stop()
        wait_for(lambda: "cleo" not in {p["name"] for p in fetcher.ctl("peers")}, "cleo to go")
        bad_share = root / "erin-share"
        bad_share.mkdir()
        shutil.copyfile(data, bad_share / data.name)
        erin = Member(root, "erin", url, bad_share, limit)
        erin.start()
        stack.callback(erin.stop)
        fetcher.sees(["erin"])
        fetcher.keeps_listing("erin", sha)
        piece_size = next(f["piece_size"] for f in fetcher.ctl("ls", "erin"))
        damage_in_place(bad_share / data.name, piece_size, every=8)
        lied, outcome = fetch(fetcher, "erin", data.name)
        liars = [s["name"] for s in outcome["sources"] if s["liar"]]
        named = [r for r in fetcher.ctl("history") if r["id"] == outcome["id"]][0]["sources"]
        in_history = [s["name"] for s in named if s["liar"]]
        verdict = "met" if lied / swarm <= 1.8 else "MISSED"
        print(f"liar (erin damaged on disk):         {lied:6.2f} s ({mib / lied:5.1f} MiB/s)")
        print(f"  {sources_line(outcome)}; liars in the history: {in_history or 'NONE'}")
        print(f"  vs the honest swarm: {lied / swarm:.2f}x per MiB (goal <= 1.8: {verdict})")
        if liars != ["erin"] or in_history != ["erin"]:
            raise SystemExit(f"bench: erin was not named the liar: {outcome['sources']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
