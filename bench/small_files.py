"""Small files: 4 KiB fetched 200 times (wall and daemon-side), 1 000 × 64 KiB as a folder.

.venv/bin/python -m bench.small_files [--profile DIR]

Besides the goals of issue 14 it prints where a small file's time goes: the
CLI's own floor (``p2pctl status`` against the same daemon), and the CPU
each daemon spends per file (from /proc, user + system, all threads).
``--profile DIR`` runs both daemons under cProfile (their trio thread only;
worker threads are not profiled) and prints each one's top functions.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.transfer import cpu_seconds, ctl, start_peer, start_registry, wait_for

SMALL_FILES = 200
#: Fetched by a raw JSON-RPC call instead of p2pctl.
RAW_FILES = 50
FOLDER_FILES = 1000
#: Issue 14's targets.
WALL_GOAL_MS = 40.0
DAEMON_GOAL_MS = 4.0
FOLDER_GOAL = 500.0
IDLE_SECONDS = 3.0


def rpc_fetch(socket_path: Path, path: str) -> float:
    """Seconds from a raw JSON-RPC fetch call to its answer: p2pd's whole part of a fetch."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(socket_path))
        started = time.perf_counter()
        call = {"jsonrpc": "2.0", "id": 1, "method": "fetch"}
        sock.sendall(
            json.dumps({**call, "params": {"peer": "sender", "path": path}}).encode() + b"\n"
        )
        answer = b""
        while not answer.endswith(b"\n"):
            answer += sock.recv(65536)
        elapsed = time.perf_counter() - started
    assert json.loads(answer)["result"]["status"] == "ok", answer
    return elapsed


def timed_ctl(socket_path: Path, *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    out = ctl(socket_path, *args)
    return time.perf_counter() - started, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, help="run both daemons under cProfile into DIR")
    args = parser.parse_args()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="p2pd-small-") as tmp:
        root = Path(tmp)
        share = root / "share"
        (share / "many").mkdir(parents=True)
        for i in range(SMALL_FILES + RAW_FILES):
            (share / f"s{i}.bin").write_bytes(os.urandom(4096))
        for i in range(FOLDER_FILES):
            (share / "many" / f"m{i:04d}.bin").write_bytes(os.urandom(64 * 1024))
        empty = root / "empty"
        empty.mkdir()
        registry, url = start_registry()
        sender, sender_sock = start_peer(root, "sender", url, share, args.profile)
        receiver, receiver_sock = start_peer(root, "receiver", url, empty, args.profile)
        daemons = {"receiver": receiver.pid, "sender": sender.pid}
        try:
            wait_for(lambda: '"sender"' in ctl(receiver_sock, "--json", "peers"), "the peers")
            wait_for(lambda: '"receiver"' in ctl(sender_sock, "--json", "peers"), "the peers")
            wait_for(
                lambda: (
                    json.loads(ctl(sender_sock, "--json", "status"))["shared_files"]
                    == SMALL_FILES + RAW_FILES + FOLDER_FILES
                ),
                "the sender's index",
            )
            # Heartbeats and the like, to take out of the figures per file.
            idle_before = {name: cpu_seconds(pid) for name, pid in daemons.items()}
            time.sleep(IDLE_SECONDS)
            idle = {n: (cpu_seconds(p) - idle_before[n]) / IDLE_SECONDS for n, p in daemons.items()}
            floor = [timed_ctl(receiver_sock, "status")[0] for _ in range(50)]
            started = time.perf_counter()
            cpu_before = {name: cpu_seconds(pid) for name, pid in daemons.items()}
            walls = [
                timed_ctl(receiver_sock, "fetch", "sender", f"s{i}.bin")[0]
                for i in range(SMALL_FILES)
            ]
            small_time = time.perf_counter() - started
            small_cpu = {
                n: cpu_seconds(p) - cpu_before[n] - idle[n] * small_time for n, p in daemons.items()
            }
            raw = [
                rpc_fetch(receiver_sock, f"s{i}.bin")
                for i in range(SMALL_FILES, SMALL_FILES + RAW_FILES)
            ]
            history = json.loads(ctl(receiver_sock, "--json", "history"))
            daemon = [h["finished_at"] - h["started_at"] for h in history if h["status"] == "ok"]
            cpu_before = {name: cpu_seconds(pid) for name, pid in daemons.items()}
            elapsed, out = timed_ctl(receiver_sock, "--json", "fetch", "sender", "many/")
            folder_cpu = {
                n: cpu_seconds(p) - cpu_before[n] - idle[n] * elapsed for n, p in daemons.items()
            }
            outcomes = json.loads(out)
        finally:
            for process in (receiver, sender, registry):
                process.send_signal(signal.SIGTERM)
            for process in (receiver, sender, registry):
                process.wait(timeout=30)
    wall, inside = statistics.median(walls) * 1000, statistics.median(daemon) * 1000
    cli = statistics.median(floor) * 1000
    print(
        f"4 KiB x {SMALL_FILES}: p2pctl fetch median {wall:.1f} ms "
        f"(goal <= {WALL_GOAL_MS:g}: {_ok(wall <= WALL_GOAL_MS)}), daemon-side median "
        f"{inside:.1f} ms (goal <= {DAEMON_GOAL_MS:g}: {_ok(inside <= DAEMON_GOAL_MS)})"
    )
    print(
        f"  p2pctl's own floor (`p2pctl status`, median of 50) {cli:.1f} ms; p2pd's answer "
        f"to a raw JSON-RPC fetch (listing + transfer), median of {RAW_FILES}: "
        f"{statistics.median(raw) * 1000:.1f} ms;\n  "
        f"CPU per file: receiver {_per_file(small_cpu['receiver'], SMALL_FILES)}, "
        f"sender {_per_file(small_cpu['sender'], SMALL_FILES)} (idle CPU taken out: receiver "
        f"{idle['receiver'] * 1000:.0f}, sender {idle['sender'] * 1000:.0f} ms/s)"
    )
    ok = sum(o["status"] == "ok" for o in outcomes)
    rate = len(outcomes) / elapsed
    print(
        f"{FOLDER_FILES} x 64 KiB, one folder fetch: {ok} ok, {rate:.0f} files/s "
        f"(goal >= {FOLDER_GOAL:g}: {_ok(rate >= FOLDER_GOAL and ok == FOLDER_FILES)})"
    )
    print(
        f"  CPU per file: receiver {_per_file(folder_cpu['receiver'], len(outcomes))}, "
        f"sender {_per_file(folder_cpu['sender'], len(outcomes))} "
        f"({elapsed * 1000 / max(len(outcomes), 1):.2f} ms of wall per file, 2 cores shared)"
    )
    if args.profile is not None:
        for name in daemons:
            print(f"\n--- {name}: top functions by own time (trio thread, whole run) ---")
            stats = pstats.Stats(str(args.profile / f"{name}.prof"))
            stats.sort_stats("tottime").print_stats(15)
    return 0


def _per_file(seconds: float, files: int) -> str:
    return f"{seconds * 1000 / max(files, 1):.2f} ms"


def _ok(met: bool) -> str:
    return "ok" if met else "MISSED"


if __name__ == "__main__":
    sys.exit(main())
