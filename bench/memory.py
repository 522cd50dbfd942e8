"""Idle memory of a running registryd and p2pd, and where it goes (issues 14, 19).

Starts a real registryd and two real p2pd (one sharing a few small files,
one with an empty share) on loopback, each p2pd on an empty ``state_dir``:
a **first start**, which creates the identity and the network CA (what every
``systemctl enable --now p2pd`` does).  Waits until both are registered, have
met and have indexed their share, lets a few heartbeats pass and measures;
then restarts both p2pd on the same state (what every later start, at each
boot, is: the identity is found) and measures again; registryd last, after
those four registrations (its first register loads cryptography to check the
member's certificate).  Each figure is the process's idle RSS (VmRSS, and
its anonymous part RssAnon: the file-backed rest is code and data mapped
from libraries, shared with other processes), and whether cryptography's
library is mapped in it.

Then a breakdown of what the imports cost: a fresh interpreter imports each
daemon's modules as it does at start, with ``importlib``'s module loading
wrapped so that each module's own RSS growth (not counting the modules it
imports itself) is charged to the third-party package that loaded it (the
standard library pydantic loads counts as pydantic's), to ours, or to the
standard library our code loads; OpenSSL and SQLite, which several need,
have lines of their own.  What the running daemon has on top of its imports
(threads, sockets, TLS contexts, the index, the allocator's slack) is shown
as "running".

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

#: Targets of issue 19, in MiB of VmRSS.
TARGETS = {"p2pd": 40.0, "registryd": 40.0}

#: What each daemon has imported once idle: p2pd imports the daemon module once its
#: start-up child (p2pd.prepare) answered; registryd's first register loads cryptography.
IMPORTS = {
    "p2pd": ["p2pd.main", "p2pd.daemon"],
    "registryd": ["registryd.main", "registryd.server", "cryptography.x509"],
}

#: The file cryptography's compiled part is loaded from (OpenSSL is linked into it).
CRYPTOGRAPHY_LIBRARY = "cryptography/hazmat/bindings/_rust"

#: Our own packages, summed as one line.
OURS = {"p2pd", "p2pcommon", "registryd"}

#: Standard modules around a large C library, shown on their own line whoever loads
#: them first (several packages need them).
LIBRARIES = {
    "_ssl": "OpenSSL (libssl, libcrypto)",
    "ssl": "OpenSSL (libssl, libcrypto)",
    "_hashlib": "OpenSSL (libssl, libcrypto)",
    "_sqlite3": "SQLite (libsqlite3)",
    "sqlite3": "SQLite (libsqlite3)",
}

#: Run by ``python -c`` so that nothing is imported before the loading is wrapped.
#: Each module's own growth is recorded with its owner: the outermost third-party
#: package being loaded when it was (so that the standard library trio loads,
#: ssl for one, counts as trio's), or null when our code loaded it directly.
_IMPORT_PROBE = r"""
import sys, os, json
import _frozen_importlib as bootstrap
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
OURS = set(sys.argv[1].split(","))
def rss():
    with open("/proc/self/statm", "rb") as f:
        fields = f.read().split()
    resident, shared = int(fields[1]), int(fields[2])
    return resident * PAGE_KIB, (resident - shared) * PAGE_KIB
def third_party(top):
    return not (top in OURS or top in sys.stdlib_module_names or top.startswith("_"))
modules = {}
stack = [[0, 0, None]]
original = bootstrap._load_unlocked
def load(spec):
    top = spec.name.partition(".")[0]
    outer = next((frame[2] for frame in stack if frame[2] is not None), None)
    owner = outer or (top if third_party(top) else None)
    before = rss()
    stack.append([0, 0, owner])
    try:
        return original(spec)
    finally:
        after = rss()
        nested = stack.pop()
        grown = (after[0] - before[0], after[1] - before[1])
        modules[spec.name] = [grown[0] - nested[0], grown[1] - nested[1], owner]
        stack[-1][0] += grown[0]
        stack[-1][1] += grown[1]
bootstrap._load_unlocked = load
start = rss()
import importlib
for name in sys.argv[2:]:
    importlib.import_module(name)
end = rss()
print(json.dumps({"start": start, "end": end, "modules": modules}))
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


def maps_cryptography(pid: int) -> bool:
    """Whether cryptography's compiled library is mapped in the process."""
    return CRYPTOGRAPHY_LIBRARY in Path(f"/proc/{pid}/maps").read_text()


def import_breakdown(daemon: str) -> dict[str, object]:
    """What importing ``daemon``'s modules costs, per top-level package (KiB)."""
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, ",".join(OURS), *IMPORTS[daemon]],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    data: dict[str, object] = json.loads(result.stdout)
    return data


def _group(modules: dict[str, list[object]]) -> list[tuple[str, int, int, int, str]]:
    """(group, RSS KiB, anonymous KiB, modules, its largest parts) by owner, largest first."""
    grouped: dict[str, dict[str, list[int]]] = {}
    for name, (rss, anon, owner) in modules.items():
        assert isinstance(rss, int) and isinstance(anon, int)
        top = name.partition(".")[0]
        if top in LIBRARIES:
            group = LIBRARIES[top]
        elif isinstance(owner, str):
            group = owner
        elif top in OURS:
            group = "ours (p2pd, p2pcommon, registryd)"
        else:
            group = "standard library our code imports"
        part = grouped.setdefault(group, {}).setdefault(top, [0, 0, 0])
        part[0] += rss
        part[1] += anon
        part[2] += 1
    rows = []
    for group, parts in grouped.items():
        largest = sorted(parts.items(), key=lambda item: -item[1][0])
        shown = [f"{top} {_mib(kib).strip()}" for top, (kib, _, _) in largest[:4] if kib >= 128]
        rows.append(
            (
                group,
                sum(p[0] for p in parts.values()),
                sum(p[1] for p in parts.values()),
                sum(p[2] for p in parts.values()),
                ", ".join(shown),
            )
        )
    return sorted(rows, key=lambda row: -row[1])


def _mib(kib: float) -> str:
    return f"{kib / 1024:5.1f}"


def report(daemon: str, idle: dict[str, Sequence[dict[str, int]]]) -> bool:
    """Print one daemon's figures (by moment) and breakdown; whether each met its target."""
    target = TARGETS[daemon]
    met = True
    for moment, statuses in idle.items():
        for number, status in enumerate(statuses, 1):
            rss = status["VmRSS"] / 1024
            ok = rss <= target
            met &= ok
            label = daemon if len(statuses) == 1 else f"{daemon} #{number}"
            crypto = "cryptography loaded" if status["cryptography"] else "no cryptography"
            print(
                f"{label}, {moment}: idle VmRSS {rss:.1f} MiB (RssAnon "
                f"{status['RssAnon'] / 1024:.1f}, RssFile {status['RssFile'] / 1024:.1f}; "
                f"{status['Threads']} threads; {crypto}) "
                f"(goal <= {target:g}: {'ok' if ok else 'MISSED'})"
            )
    probe = import_breakdown(daemon)
    start, end = probe["start"], probe["end"]
    assert isinstance(start, list) and isinstance(end, list)
    modules = probe["modules"]
    assert isinstance(modules, dict)
    every = [status for statuses in idle.values() for status in statuses]
    running = min(s["VmRSS"] for s in every)
    running_anon = min(s["RssAnon"] for s in every)
    imported = " + ".join(IMPORTS[daemon])
    print(
        f"  where it goes (MiB; RSS / anonymous; {imported} in a fresh interpreter; "
        "each package with what it loads):"
    )
    print(f"    {'bare interpreter (with site)':38} {_mib(start[0])} / {_mib(start[1])}")
    rows = _group(modules)
    small = [row for row in rows if row[1] < 256]
    for name, rss_kib, anon, count, parts in rows:
        if rss_kib >= 256:
            print(f"    {name:38} {_mib(rss_kib)} / {_mib(anon)}   ({count} modules: {parts})")
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


def measure(pid: int) -> dict[str, int]:
    return {**proc_status(pid), "cryptography": maps_cryptography(pid)}


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
            # A first start: each p2pd creates its identity and the network CA.
            wait_idle(alpha_sock, 1)
            wait_idle(bravo_sock, 1)
            time.sleep(args.settle)  # a few heartbeats and member-list syncs (every second)
            first = [measure(alpha.pid), measure(bravo.pid)]
            # A restart: the identity is found, the network CA read back.
            alpha, bravo = restart(alpha), restart(bravo)
            processes = (alpha, bravo, registry)
            wait_idle(alpha_sock, 1)
            wait_idle(bravo_sock, 1)
            time.sleep(args.settle)
            again = [measure(alpha.pid), measure(bravo.pid)]
            registryd = [measure(registry.pid)]
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(timeout=15)
    print(
        f"idle after {args.settle:g} s of heartbeats every second; Python {sys.version.split()[0]}"
    )
    met = report("p2pd", {"first start": first, "after a restart": again})
    met &= report("registryd", {"after 4 registrations": registryd})
    del met  # printed: the other benchmarks report, they do not fail the run
    return 0


if __name__ == "__main__":
    sys.exit(main())
