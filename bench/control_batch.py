"""One control line against a real p2pd with a large share (issue 20): a batch of `shared`.

Shares ``--files`` small files, waits until they are indexed, then sends one
line holding a batch of ``--calls`` `shared` calls and reads the answer.
Printed: the answer line's size and how long it took, p2pd's peak RSS
(VmHWM) before and after, and the worst latency of `status` calls made on
another connection meanwhile (a stalled event loop shows here; the systemd
unit's watchdog kills a loop stalled for 30 s).

    .venv/bin/python -m bench.control_batch [--files N] [--calls N]
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
from pathlib import Path

from tests.hostile.attacker import poll, rpc
from tests.support import run_p2pd, run_registryd

MiB = 1024 * 1024


def status_value(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key}")


def answer_to(path: Path, line: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(600)
        sock.connect(str(path))
        sock.sendall(line + b"\n")
        received = bytearray()
        while not received.endswith(b"\n"):
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            received += chunk
    return bytes(received)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=60_000)
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="control-batch-") as temporary:
        base = Path(temporary)
        share = base / "victim" / "share"
        for i in range(args.files):
            folder = share / f"folder-{i // 1000:03d}"
            if i % 1000 == 0:
                folder.mkdir(parents=True)
            (folder / f"a-file-with-a-typical-name-{i:06d}.txt").write_text(str(i))
        with (
            run_registryd(base) as registry,
            run_p2pd(base, "victim", [registry.url]) as victim,
        ):

            def indexed() -> bool:
                answer = rpc(victim.socket_path, "status", timeout=60)
                return bool(answer["result"]["shared_files"] == args.files)

            poll(indexed, timeout=600, what="the share to be indexed", every=1)
            pid = victim.process.pid
            peak_before = status_value(pid, "VmHWM")
            batch = [{"jsonrpc": "2.0", "id": i, "method": "shared"} for i in range(args.calls)]
            worst, stop = [0.0], threading.Event()

            def watch() -> None:
                while not stop.is_set():
                    started = time.monotonic()
                    rpc(victim.socket_path, "status", timeout=600)
                    worst[0] = max(worst[0], time.monotonic() - started)
                    time.sleep(0.01)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            time.sleep(0.2)
            started = time.monotonic()
            line = answer_to(victim.socket_path, json.dumps(batch).encode())
            took = time.monotonic() - started
            stop.set()
            watcher.join()
            answers = json.loads(line)
            full = sum("result" in answer for answer in answers)
            print(
                f"{args.files} files shared; a batch of {args.calls} `shared`: "
                f"{len(line) / MiB:.1f} MiB answer line in {took:.2f} s, {full} results "
                f"and {len(answers) - full} errors"
            )
            print(
                f"p2pd peak RSS (VmHWM): {peak_before / MiB:.0f} MiB before, "
                f"{status_value(pid, 'VmHWM') / MiB:.0f} MiB after"
            )
            print(f"worst `status` latency meanwhile: {worst[0] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
