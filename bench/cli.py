"""`p2pctl status` start-up: wall time per call against a real p2pd, in both layouts.

(a) the dev venv's entry point (an editable install, whose import hook
runs at every start); (b) the installed layout, as ``make install`` makes it
(scripts/install.sh: a venv of its own, pip upgraded, a non-editable install),
built here in a temp dir unless ``--installed-python`` names an existing one;
(c) for scale, bare interpreter starts. Every round runs each command once, in
turn, so that a noisy neighbour slows them all alike; medians of ``--runs``.
Then ``python -X importtime`` of the installed command: where its time goes.

    .venv/bin/python -m bench.cli [--runs N] [--installed-python PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.transfer import BIN, ctl, start_peer, start_registry, wait_for

SOURCE = Path(__file__).resolve().parent.parent
#: The interpreter the venvs are made from (on this machine `python3` on PATH
#: may be a pyenv shim: a shell script that costs more than Python's start).
BASE_PYTHON = os.path.realpath(sys.executable)
TARGET_MS = 25.0


def installed_layout(prefix: Path) -> Path:
    """What scripts/install.sh makes in /opt/p2pd, in ``prefix``: its python."""
    subprocess.run([BASE_PYTHON, "-m", "venv", str(prefix)], check=True)
    pip = [str(prefix / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check"]
    # As install.sh: the newer pip writes another console script than the bundled one.
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    build = prefix / "build"
    shutil.copytree(
        SOURCE,
        build,
        ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", ".*_cache"),
    )
    # Without the dependencies: p2pctl imports none, and none of them ships a
    # .pth file that site would run at start-up (checked with a full install).
    subprocess.run([*pip, "--no-deps", str(build)], check=True)
    python = prefix / "bin" / "python"
    # pip's console script kept for comparison, then what install.sh puts in its place.
    shutil.copy2(prefix / "bin" / "p2pctl", prefix / "bin" / "p2pctl-pip")
    subprocess.run(
        [str(python), "-m", "p2pctl.launcher", str(prefix / "bin" / "p2pctl")], check=True
    )
    return python


@contextlib.contextmanager
def daemon(root: Path) -> Iterator[Path]:
    """A registryd and one p2pd registered with it; yields the control socket."""
    registry, url = start_registry()
    share = root / "share"
    share.mkdir()
    peer, socket_path = start_peer(root, "bench", url, share)
    try:
        wait_for(lambda: '"registered": true' in ctl(socket_path, "--json", "status"), "p2pd")
        yield socket_path
    finally:
        for process in (peer, registry):
            process.send_signal(signal.SIGTERM)
        for process in (peer, registry):
            process.wait(timeout=15)


def timed(command: list[str]) -> tuple[float, float]:
    """One run: (wall ms, CPU ms of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall * 1000, cpu * 1000


def importtime(command: list[str], runs: int = 7, top: int = 10) -> list[tuple[int, int, str]]:
    """The ``top`` modules by own import time, median of ``runs``: (self µs, cumulative µs, name).

    One run is noisy here (a single preemption shows as a slow module).
    """
    # The script's own interpreter and flags (the launcher's -IS), plus -X importtime.
    interpreter, *flags = Path(command[0]).read_text().splitlines()[0].removeprefix("#!").split()
    times: dict[str, list[tuple[int, int]]] = {}
    for _ in range(runs):
        stderr = subprocess.run(
            [interpreter, "-X", "importtime", *flags, *command],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
        for line in stderr.splitlines():
            if line.startswith("import time:") and "self [us]" not in line:
                own, cumulative, name = line.removeprefix("import time:").split("|")
                times.setdefault(name.strip(), []).append((int(own), int(cumulative)))
    rows = [
        (
            int(statistics.median(o for o, _ in samples)),
            int(statistics.median(c for _, c in samples)),
            name,
        )
        for name, samples in times.items()
    ]
    return sorted(rows, reverse=True)[:top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument(
        "--installed-python",
        type=Path,
        help="python of an installed layout, e.g. /opt/p2pd/bin/python",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="p2pd-bench-cli-") as tmp:
        root = Path(tmp)
        python = args.installed_python or installed_layout(root / "opt-p2pd")
        installed = python.parent / "p2pctl"
        with daemon(root) as socket_path:
            status = ["--socket", str(socket_path), "status"]
            commands = {
                "installed p2pctl status": [str(installed), *status],
                "installed p2pctl --json status": [str(installed), "--json", *status],
            }
            pips = python.parent / "p2pctl-pip"
            if pips.exists():
                commands["installed, pip's script"] = [str(pips), *status]
            commands |= {
                "dev venv p2pctl status": [str(BIN / "p2pctl"), *status],
                "installed python -c pass": [str(python), "-c", "pass"],
                "installed python -S -c pass": [str(python), "-S", "-c", "pass"],
                "python3 -c pass": [BASE_PYTHON, "-c", "pass"],
                "python3 -S -c pass": [BASE_PYTHON, "-S", "-c", "pass"],
            }
            shown = {
                subprocess.run(c, capture_output=True, check=True).stdout
                for name, c in commands.items()
                if name.endswith(" status") and "--json" not in name
            }
            if len(shown) != 1:
                raise SystemExit("bench: the two layouts print different statuses")
            for command in commands.values():  # warm-up: page cache, .pyc files
                timed(command)
            samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
            for _ in range(args.runs):
                for name, command in commands.items():
                    samples[name].append(timed(command))
            offenders = importtime([str(installed), *status])
    print(f"median of {args.runs} rounds; {BASE_PYTHON}; load {os.getloadavg()[0]:.2f}")
    print(f"{'':30} {'wall ms':>8} {'CPU ms':>8}")
    for name, runs in samples.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"{name:30} {wall:8.1f} {cpu:8.1f}")
    wall = statistics.median(w for w, _ in samples["installed p2pctl status"])
    verdict = "ok" if wall <= TARGET_MS else "MISSED"
    print(
        f"installed p2pctl status: {wall:.1f} ms wall median (target <= {TARGET_MS:g}: {verdict})"
    )
    print("python -X importtime, installed p2pctl status, by own time (µs self / cumulative):")
    for own, cumulative, name in offenders:
        print(f"  {own:6d} {cumulative:7d}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
