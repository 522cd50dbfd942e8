"""What a queued transfer costs: a folder fetch of N files from a member that never answers.

A fake member (the hostile suite's: its own certificate, registered with a
real registryd) lists N files under ``many/`` and leaves every file request
hanging, so that 8 transfers wait for an answer and the rest stay queued.
A real p2pd fetches ``many/`` with ``--detach``; printed: how long the call
took, the daemon's RSS growth per queued transfer, and how much the
history file grew.  Then every transfer is cancelled.

    .venv/bin/python -m bench.folder_fetch [--files N]

With more files than p2pd queues at once, the fetch is refused: the time and
memory of the refusal are printed instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.transfer import rss_kib
from tests.hostile.attacker import Attacker, ctl, poll, register, rpc
from tests.hostile.fake_member import HANG, FakeMember, listing
from tests.support import run_p2pd, run_registryd


def history_bytes(state_dir: Path) -> int:
    return sum(p.stat().st_size for p in state_dir.glob("history.sqlite3*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args(argv)
    entries = [
        {
            "path": f"many/{n // 1000:03d}/f{n:07d}.bin",
            "size": 4,
            "mtime": 0,
            "sha256": hashlib.sha256(str(n).encode()).hexdigest(),
        }
        for n in range(args.files)
    ]
    with tempfile.TemporaryDirectory(prefix="p2pd-folder-") as tmp:
        base = Path(tmp)
        with (
            run_registryd(base, {"REGISTRYD_PEER_TTL": "600"}) as registry,
            run_p2pd(base, "carol", [registry.url]) as carol,
        ):
            who = Attacker.new(base / "evil")
            trusted = [(carol.state_dir / "identity.crt").read_text()]
            routes: dict[str, bytes] = {"/files": listing(*entries), "/files/*": HANG}
            with FakeMember(who, trusted, dict(routes)) as evil:
                assert register(registry.url, who, "evil", evil.port).status == 200
                poll(
                    lambda: "evil" in ctl(carol.socket_path, "peers").stdout,
                    timeout=30,
                    what="carol to see evil",
                )
                assert ctl(carol.socket_path, "ls", "evil", timeout=120).returncode == 0
                time.sleep(1)
                pid = carol.process.pid
                rss_before, history_before = rss_kib(pid), history_bytes(carol.state_dir)
                started = time.monotonic()
                fetched = ctl(
                    carol.socket_path, "--json", "fetch", "--detach", "evil", "many/",
                    timeout=600,
                )  # fmt: skip
                elapsed = time.monotonic() - started
                time.sleep(1)
                rss_after, history_after = rss_kib(pid), history_bytes(carol.state_dir)
                code = fetched.returncode
                print(f"folder fetch of {args.files} files: {elapsed:.2f} s, exit {code}")
                if fetched.returncode == 0:
                    ids = [t["id"] for t in json.loads(fetched.stdout)]
                    per = (rss_after - rss_before) * 1024 / max(len(ids), 1)
                    print(
                        f"RSS {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MiB: "
                        f"{per / 1024:.2f} KiB per queued transfer; history "
                        f"+{(history_after - history_before) / 1024:.0f} KiB "
                        f"({(history_after - history_before) / len(ids):.0f} B per transfer)"
                    )
                    for transfer_id in ids:
                        rpc(carol.socket_path, "cancel", {"id": transfer_id}, timeout=60)
                else:
                    message = fetched.stderr.strip() or fetched.stdout.strip()
                    print(f"refused: {message[:400]}")
                    print(f"RSS {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MiB")
    return 0


if __name__ == "__main__":
    os.environ.pop("P2PD_SOCKET", None)
    sys.exit(main())
