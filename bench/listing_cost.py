"""What a member's large listing costs a real p2pd (issue 20): memory kept, loop stalls.

A fake member (tests/hostile/fake_member.py) serves a valid listing of
``--entries`` files (546 470 make the issue's 63 MiB); a real p2pd is asked
to fetch a file it does not list, which fetches, checks and keeps the
listing.  Printed: the body's size, how long the call took, the p2pd's RSS
growth (VmRSS) once the listing is kept, and the worst latency of `status`
calls made on another connection meanwhile (a stalled event loop shows
here, and is what the systemd watchdog kills).

    .venv/bin/python -m bench.listing_cost [--entries N] [--members M]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import threading
import time
from pathlib import Path

from tests.hostile.attacker import Attacker, poll, register, rpc
from tests.hostile.fake_member import FakeMember, http_response
from tests.support import run_p2pd, run_registryd

MiB = 1024 * 1024


def body_of(count: int, seed: str) -> bytes:
    files = [
        {
            "path": f"{seed}/{i // 1000}/{i}",
            "size": i % 1000,
            "mtime": 0,
            "sha256": hashlib.sha256(f"{seed}{i}".encode()).hexdigest(),
        }
        for i in range(count)
    ]
    return json.dumps({"generation": 1, "files": files}, separators=(",", ":")).encode()


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=546_470)
    parser.add_argument("--members", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="listing-cost-") as temporary:
        base = Path(temporary)
        with (
            run_registryd(base, {"REGISTRYD_PEER_TTL": "600"}) as registry,
            run_p2pd(base, "victim", [registry.url]) as victim,
        ):
            trusted = [(victim.state_dir / "identity.crt").read_text()]
            fakes = []
            for n in range(args.members):
                body = body_of(args.entries, f"m{n}")
                answer = http_response(200, body, {"ETag": '"1"'})
                fake = FakeMember(Attacker.new(base / f"m{n}"), trusted, {"/files": answer})
                fakes.append(fake.__enter__())
                assert register(registry.url, fake.who, f"large-{n}", fake.port).status == 200
            names = {f"large-{n}" for n in range(args.members)}

            def known() -> bool:
                peers = rpc(victim.socket_path, "peers", timeout=30)["result"]
                return names <= {p["name"] for p in peers}

            poll(known, timeout=60, what="the members", every=0.3)
            print(f"listing: {args.entries} entries, {len(body) / MiB:.1f} MiB of JSON each")
            worst, stop = [0.0], threading.Event()

            def watch() -> None:
                while not stop.is_set():
                    started = time.monotonic()
                    rpc(victim.socket_path, "status", timeout=120)
                    worst[0] = max(worst[0], time.monotonic() - started)
                    time.sleep(0.01)

            watcher = threading.Thread(target=watch, daemon=True)
            before = rss(victim.process.pid)
            watcher.start()
            for n in range(args.members):
                started = time.monotonic()
                params = {"peer": f"large-{n}", "path": "not/there"}
                answer = rpc(victim.socket_path, "fetch", params, timeout=300)
                took = time.monotonic() - started
                grown = rss(victim.process.pid) - before
                print(
                    f"member {n + 1}: fetch answered in {took:.2f} s "
                    f"({answer['error']['message'][:40]}…); "
                    f"RSS +{grown / MiB:.0f} MiB since before the first"
                )
            stop.set()
            watcher.join()
            print(f"worst `status` latency meanwhile: {worst[0] * 1000:.0f} ms")
            for fake in fakes:
                fake.__exit__(None, None, None)


if __name__ == "__main__":
    main()
