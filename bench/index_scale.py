"""Share index at scale: cold scan of 10 000 files (vs sha256sum), warm restart, listing size.

Issue 23: the scan computes each file's pieces root and piece layer in the
same read as its sha256.  Its speed is compared, in the same run, with the
scan as it was (sha256 alone: ``sha256_only`` stands in for the hashing),
for the many small files and for a few large ones (``--large`` MiB in 4
files); the goal is at least 80 % of the old speed.

.venv/bin/python bench/index_scale.py [--files N] [--size BYTES] [--large MIB]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from p2pd.share import scan as scan_module
from p2pd.share.hashing import FileHasher, Hashed
from p2pd.share.merkle import piece_size_for
from p2pd.share.watching import Share

MiB = 1024 * 1024


def sha256_only(
    hasher: FileHasher, fd: int, size: int, check: object = None
) -> tuple[Hashed, bytes]:
    """The scan's hashing before issue 23: the whole-file sha256 alone."""
    digest = hashlib.sha256()
    while block := os.read(fd, MiB):
        digest.update(block)
    return Hashed(digest.hexdigest(), None, piece_size_for(size)), b""


def cold_scans(share_dir: Path, state_base: Path, rounds: int = 3) -> tuple[float, float, int]:
    """Best cold scan time of the old hashing and of the new one, alternated."""
    real = scan_module._hash_file
    old: list[float] = []
    new: list[float] = []
    count = 0
    for round_ in range(rounds):
        for name, way, times in (("old", sha256_only, old), ("new", real, new)):
            state = state_base / f"{name}{round_}"
            state.mkdir()
            scan_module._hash_file = way
            try:
                seconds, count = trio.run(index_once, share_dir, state)
            finally:
                scan_module._hash_file = real
            times.append(seconds)
    return min(old), min(new), count


async def index_once(share_dir: Path, state_dir: Path) -> tuple[float, int]:
    share = Share(share_dir, state_dir)
    started = time.perf_counter()
    await share.rescan()
    return time.perf_counter() - started, len(share.index)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--large", type=int, default=1024, help="MiB in 4 large files")
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
        old_small, new_small, _ = cold_scans(share_dir, root)
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
        large_dir = root / "large"
        large_dir.mkdir()
        block = os.urandom(MiB)
        for i in range(4):
            with (large_dir / f"large{i}.bin").open("wb") as out:
                for _ in range(args.large // 4):
                    out.write(block)
        (root / "large-state").mkdir()
        old_large, new_large, _ = cold_scans(large_dir, root / "large-state")
    print(f"{count} files of {args.size} B")
    for what, old, new, total in (
        (f"{count} files of {args.size} B", old_small, new_small, count * args.size),
        (f"4 files, {args.large} MiB", old_large, new_large, args.large * MiB),
    ):
        ratio = old / new
        print(
            f"cold scan of {what}: sha256 alone {total / old / 1e6:.0f} MB/s, "
            f"+ pieces root and layer {total / new / 1e6:.0f} MB/s = {ratio:.0%} "
            f"(goal >= 80 %: {'ok' if ratio >= 0.8 else 'MISSED'})"
        )
    print(f"cold index (hash all): {cold:.2f} s; find | xargs sha256sum: {reference:.2f} s")
    print(f"warm restart (no re-hash): {warm:.2f} s (goal < 2 s: {'ok' if warm < 2 else 'MISSED'})")
    size_mb, ms = len(body) / 1e6, listing * 1000
    print(f"GET /files body for {count} entries: {size_mb:.1f} MB built in {ms:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
