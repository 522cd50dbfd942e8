"""Share index at scale: cold scan of 10 000 files (vs sha256sum), warm restart, listing size.

.venv/bin/python bench/index_scale.py [--files N] [--size BYTES]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from p2pd.share.watching import Share


async def index_once(share_dir: Path, state_dir: Path) -> tuple[float, int]:
    share = Share(share_dir, state_dir)
    started = time.perf_counter()
    await share.rescan()
    return time.perf_counter() - started, len(share.index)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="p2pd-index-") as tmp:
        root = Path(tmp)
        share_dir, state_dir = root / "share", root / "state"
        state_dir.mkdir()
        for folder in range(args.files // 100 + 1):
            (share_dir / f"d{folder:03d}").mkdir(parents=True)
        for i in range(args.files):
            (share_dir / f"d{i // 100:03d}" / f"f{i:05d}.bin").write_bytes(os.urandom(args.size))
        subprocess.run(["sync"], check=True)
        started = time.perf_counter()
        subprocess.run(
            f"find {share_dir} -type f -print0 | xargs -0 sha256sum > /dev/null",
            shell=True,
            check=True,
        )
        reference = time.perf_counter() - started
        cold, count = trio.run(index_once, share_dir, state_dir)
        warm, _ = trio.run(index_once, share_dir, state_dir)
        share = Share(share_dir, state_dir)
        trio.run(share.rescan)
        started = time.perf_counter()
        body = json.dumps(
            {"generation": 1, "files": [e.to_json() for e in share.index.listing()]},
            separators=(",", ":"),
        ).encode()
        listing = time.perf_counter() - started
    print(f"{count} files of {args.size} B")
    print(f"cold index (hash all): {cold:.2f} s; find | xargs sha256sum: {reference:.2f} s")
    print(f"warm restart (no re-hash): {warm:.2f} s (goal < 2 s: {'ok' if warm < 2 else 'MISSED'})")
    size_mb, ms = len(body) / 1e6, listing * 1000
    print(f"GET /files body for {count} entries: {size_mb:.1f} MB built in {ms:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
