"""Small files: 4 KiB fetched 200 times (wall and daemon-side), 1 000 × 64 KiB as a folder.

.venv/bin/python bench/small_files.py
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.transfer import BIN, SECRET, ctl, free_port, start_peer, wait_for


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="p2pd-small-") as tmp:
        root = Path(tmp)
        share = root / "share"
        (share / "many").mkdir(parents=True)
        for i in range(200):
            (share / f"s{i}.bin").write_bytes(os.urandom(4096))
        for i in range(1000):
            (share / "many" / f"m{i:04d}.bin").write_bytes(os.urandom(64 * 1024))
        empty = root / "empty"
        empty.mkdir()
        port = free_port()
        env = {**os.environ, "REGISTRYD_SECRET": SECRET, "REGISTRYD_LISTEN": f"127.0.0.1:{port}"}
        registry = subprocess.Popen(
            [str(BIN / "registryd"), "--config", os.devnull], env=env, stderr=subprocess.DEVNULL
        )
        url = f"http://127.0.0.1:{port}"
        sender, sender_sock = start_peer(root, "sender", url, share)
        receiver, receiver_sock = start_peer(root, "receiver", url, empty)
        try:
            wait_for(lambda: '"sender"' in ctl(receiver_sock, "--json", "peers"), "the peers")
            wait_for(lambda: '"receiver"' in ctl(sender_sock, "--json", "peers"), "the peers")
            walls = []
            for i in range(200):
                started = time.perf_counter()
                ctl(receiver_sock, "fetch", "sender", f"s{i}.bin")
                walls.append(time.perf_counter() - started)
            history = json.loads(ctl(receiver_sock, "--json", "history"))
            daemon = [h["finished_at"] - h["started_at"] for h in history]
            started = time.perf_counter()
            outcomes = json.loads(ctl(receiver_sock, "--json", "fetch", "sender", "many/"))
            elapsed = time.perf_counter() - started
        finally:
            for process in (receiver, sender, registry):
                process.send_signal(signal.SIGTERM)
            for process in (receiver, sender, registry):
                process.wait(timeout=15)
    wall, inside = statistics.median(walls) * 1000, statistics.median(daemon) * 1000
    print(
        f"4 KiB x 200: p2pctl fetch median {wall:.1f} ms (goal <= 100: {_ok(wall <= 100)}), "
        f"daemon-side median {inside:.1f} ms (goal <= 6: {_ok(inside <= 6)})"
    )
    ok = sum(o["status"] == "ok" for o in outcomes)
    rate = len(outcomes) / elapsed
    print(
        f"1000 x 64 KiB, one folder fetch: {ok} ok, {rate:.0f} files/s "
        f"(goal >= 300: {_ok(rate >= 300)})"
    )
    return 0


def _ok(met: bool) -> str:
    return "ok" if met else "MISSED"


if __name__ == "__main__":
    sys.exit(main())
