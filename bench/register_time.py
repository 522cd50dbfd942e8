"""Time from starting p2pd to "registered" in its log (issue 20: the register proof).

Starts a real registryd, then the real p2pd several times on the same
``state_dir`` (the first run creates the identity; the later ones are what
every boot is), and measures from the spawn to the log line
``registered as …``, polled every 5 ms.  Also times the register proof's
child (``python -m p2pd.membership.keysign``) alone.  With ``PYTHONPATH`` naming another
checkout (and run from elsewhere than this one), it measures that code.

    .venv/bin/python -m bench.register_time [--runs N]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.transfer import start_peer, start_registry


def time_to_registered(process: subprocess.Popen[bytes], log: Path, started: float) -> float:
    deadline = started + 60
    while time.monotonic() < deadline:
        if "registered as" in log.read_text(errors="replace"):
            return time.monotonic() - started
        if process.poll() is not None:
            raise SystemExit(f"bench: p2pd ended:\n{log.read_text()}")
        time.sleep(0.005)
    raise SystemExit(f"bench: p2pd did not register within 60 s:\n{log.read_text()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=20)


def keysign_time(state: Path, runs: int) -> list[float]:
    import trio

    from p2pd.membership.link import KeySigner

    sign = KeySigner(state / "identity.key")
    times = []
    for _ in range(runs):
        started = time.monotonic()
        trio.run(sign, b'"@method": POST')
        times.append(time.monotonic() - started)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-register-") as tmp:
        root = Path(tmp)
        share = root / "share"
        share.mkdir()
        registry, url = start_registry()
        try:
            times = []
            for run in range(args.runs + 1):
                folder = root / f"run{run}"
                started = time.monotonic()
                process, _ = start_peer(root, f"run{run}", url, share)
                # The same identity every time: copy the first run's state.
                took = time_to_registered(process, folder / "log", started)
                stop(process)
                if run == 0:
                    first, state = took, folder / "state"
                else:
                    times.append(took)
                if run < args.runs:
                    target = root / f"run{run + 1}" / "state"
                    target.mkdir(parents=True)
                    for name in ("identity.key", "identity.crt", "network-ca.crt"):
                        (target / name).write_bytes((state / name).read_bytes())
                        (target / name).chmod(0o600)
            print(f"first start (identity created): {first * 1000:.0f} ms to registered")
            print(
                f"later starts ({len(times)}): median {statistics.median(times) * 1000:.0f} ms, "
                f"min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f} ms to registered"
            )
            try:
                signing = keysign_time(state, args.runs)
            except ImportError:  # a p2pd older than the register proof (PYTHONPATH)
                return 0
            print(
                f"python -m p2pd.membership.keysign alone ({len(signing)}): median "
                f"{statistics.median(signing) * 1000:.0f} ms"
            )
        finally:
            stop(registry)
    return 0


if __name__ == "__main__":
    sys.exit(main())
