"""Idle memory of a running registryd and p2pd, and where it goes (issue 14).

Starts a real registryd and two real p2pd (one sharing a few small files,
one with an empty share) on loopback, waits until both are registered, have
met and have indexed their share, then restarts both p2pd on the same state
(a daemon's first start creates its identity; every later one, at each boot,
finds it), waits again, lets a few heartbeats pass, and prints each daemon's
idle RSS (VmRSS, and its anonymous part RssAnon: the file-backed
rest is code and data mapped from libraries, shared with other processes).

Then a breakdown of what the imports cost: a fresh interpreter imports each
daemon's modules as it does at start, with ``importlib``'s module loading
wrapped so that each module's own RSS growth (not counting the modules it
imports itself) is charged to its top-level package.  What the running
daemon has on top of its imports (threads, sockets, TLS contexts, the index,
the allocator's slack) is shown as "running".

    .venv/bin/python -m bench.memory [--settle SECONDS]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.transfer import ctl, start_peer, start_registry, wait_for

#: Targets of issue 14, in MiB of VmRSS.
TARGETS = {"p2pd": 40.0, "registryd": 35.0}

#: What each daemon imports before serving (p2pd imports the daemon module after its config).
IMPORTS = {
    "p2pd": ["p2pd.main", "p2pd.daemon"],
    "registryd": ["registryd.main"],
}

#: Our own packages, summed as one line.
OURS = {"p2pd", "p2pcommon", "registryd"}

#: Run by ``python -c`` so that nothing is imported before the loading is wrapped.
_IMPORT_PROBE = r"""
import sys, os, json
import _frozen_importlib as bootstrap
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
def rss():
    with open("/proc/self/statm", "rb") as f:
        fields = f.read().split()
    resident, shared = int(fields[1]), int(fields[2])
    return resident * PAGE_KIB, (resident - shared) * PAGE_KIB
totals = {}
stack = [[0, 0]]
original = bootstrap._load_unlocked
def load(spec):
    before = rss()
    stack.append([0, 0])
    try:
        return original(spec)
    finally:
        after = rss()
        nested = stack.pop()
        grown = (after[0] - before[0], after[1] - before[1])
        entry = totals.setdefault(spec.name.partition(".")[0], [0, 0, 0])
        entry[0] += grown[0] - nested[0]
        entry[1] += grown[1] - nested[1]
        entry[2] += 1
        stack[-1][0] += grown[0]
        stack[-1][1] += grown[1]
bootstrap._load_unlocked = load
start = rss()
import importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
end = rss()
print(json.dumps({"start": start, "end": end, "packages": totals}))
"""


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile (KiB) and Threads of a process."""
    wanted = {"VmRSS", "RssAnon", "RssFile", "Threads"}
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in wanted:
            values[key] = int(value.split()[0])
    return values


def import_breakdown(daemon: str) -> dict[str, object]:
    """What importing ``daemon``'s modules costs, per top-level package (KiB)."""
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, *IMPORTS[daemon]],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    data: dict[str, object] = json.loads(result.stdout)
    return data


def _group(packages: dict[str, list[int]]) -> list[tuple[str, int, int, int]]:
    """(name, RSS KiB, anonymous KiB, modules): the standard library and ours summed."""
    grouped: dict[str, list[int]] = {}
    for name, (rss, anon, count) in packages.items():
        if name in OURS:
            key = "ours (p2pd, p2pcommon, registryd)"
        elif name in sys.stdlib_module_names or name.startswith("_"):
            key = "standard library"
        else:
            key = name
        entry = grouped.setdefault(key, [0, 0, 0])
        entry[0] += rss
        entry[1] += anon
        entry[2] += count
    rows = [(name, rss, anon, count) for name, (rss, anon, count) in grouped.items()]
    return sorted(rows, key=lambda row: -row[1])


def _mib(kib: float) -> str:
    return f"{kib / 1024:5.1f}"


def report(daemon: str, idle: Sequence[dict[str, int]]) -> bool:
    """Print one daemon's figures and breakdown; whether every instance met its target."""
    target = TARGETS[daemon]
    met = True
    for number, status in enumerate(idle, 1):
        rss = status["VmRSS"] / 1024
        ok = rss <= target
        met &= ok
        label = daemon if len(idle) == 1 else f"{daemon} #{number}"
        print(
            f"{label}: idle VmRSS {rss:.1f} MiB (RssAnon {status['RssAnon'] / 1024:.1f}, "
            f"RssFile {status['RssFile'] / 1024:.1f}; {status['Threads']} threads) "
            f"(goal <= {target:g}: {'ok' if ok else 'MISSED'})"
        )
    probe = import_breakdown(daemon)
    start, end = probe["start"], probe["end"]
    assert isinstance(start, list) and isinstance(end, list)
    packages = probe["packages"]
    assert isinstance(packages, dict)
    running = min(s["VmRSS"] for s in idle)
    running_anon = min(s["RssAnon"] for s in idle)
    print(f"  where it goes (MiB; RSS / anonymous; {daemon}'s imports in a fresh interpreter):")
    print(f"    {'bare interpreter (with site)':38} {_mib(start[0])} / {_mib(start[1])}")
    rows = _group(packages)
    for name, rss_kib, anon, count in rows:
        if rss_kib < 256:
            continue
        print(f"    {name:38} {_mib(rss_kib)} / {_mib(anon)}   ({count} modules)")
    small = [row for row in rows if row[1] < 256]
    if small:
        rss_kib, anon = sum(r[1] for r in small), sum(r[2] for r in small)
        names = ", ".join(r[0] for r in small[:6]) + (", …" if len(small) > 6 else "")
        label = f"others < 0.25 each ({len(small)})"
        print(f"    {label:38} {_mib(rss_kib)} / {_mib(anon)}   ({names})")
    print(f"    {'= imported':38} {_mib(end[0])} / {_mib(end[1])}")
    print(
        f"    {'running (threads, state, allocator)':38} "
        f"{_mib(running - end[0])} / {_mib(running_anon - end[1])}"
    )
    return met


def wait_idle(sock: Path, peers: int) -> None:
    def idle() -> bool:
        status = json.loads(ctl(sock, "--json", "status"))
        return bool(status["registered"]) and not status["indexing"] and status["peers"] >= peers

    wait_for(idle, "the daemon to be registered, met and indexed")


def restart(process: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    """The same p2pd (command, config, log) stopped and started again."""
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=15)
    command = [str(arg) for arg in process.args]  # type: ignore[union-attr]
    log = Path(command[-1]).parent / "log"
    return subprocess.Popen(command, stderr=log.open("a"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--settle", type=float, default=5.0, help="seconds of idling (heartbeats) before measuring"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="p2pd-memory-") as tmp:
        root = Path(tmp)
        share = root / "share"
        (share / "docs").mkdir(parents=True)
        for i in range(20):
            (share / "docs" / f"note{i}.txt").write_bytes(os.urandom(16 * 1024))
        empty = root / "empty"
        empty.mkdir()
        registry, url = start_registry()
        alpha, alpha_sock = start_peer(root, "alpha", url, share)
        bravo, bravo_sock = start_peer(root, "bravo", url, empty)
        processes = (alpha, bravo, registry)
        try:
            wait_idle(alpha_sock, 1)
            wait_idle(bravo_sock, 1)
            alpha, bravo = restart(alpha), restart(bravo)
            processes = (alpha, bravo, registry)
            wait_idle(alpha_sock, 1)
            wait_idle(bravo_sock, 1)
            # A few heartbeats and member-list syncs (heartbeat_interval = 1 s).
            time.sleep(args.settle)
            peers = [proc_status(alpha.pid), proc_status(bravo.pid)]
            registryd = [proc_status(registry.pid)]
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(timeout=15)
    print(
        f"idle after a restart and {args.settle:g} s of heartbeats every second; "
        f"Python {sys.version.split()[0]}"
    )
    met = report("p2pd", peers)
    met &= report("registryd", registryd)
    del met  # printed: the other benchmarks report, they do not fail the run
    return 0


if __name__ == "__main__":
    sys.exit(main())
