"""What the BEP 52 Merkle tree costs the scan (issue 23): sha256 alone vs sha256 + leaves.

A file of ``--size`` MiB (default 1 GiB) in /dev/shm is read in 1 MiB blocks
with ``os.read``, as p2pd's scan reads, and hashed four ways:

- ``sha256``: the whole-file sha256 only (the scan today);
- ``one thread``: the same loop also feeds a MerkleBuilder;
- ``two threads, fresh buffers``: the reading thread hashes each block and
  hands it over a bounded queue (4 blocks) to a second thread that feeds the
  builder;
- ``two threads, reused buffers``: the same, reading with ``readinto`` into a
  ring of 5 buffers that the second thread hands back.

Each way runs ``--repeat`` times, alternating; printed: the best and median
MB/s and the best's speed relative to sha256 alone (the issue asks for ≥ 80 %).
hashlib releases the GIL for buffers over 2 KiB, so two threads hash in
parallel on two cores.

    .venv/bin/python -m bench.merkle_cost [--size MIB] [--repeat N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import queue
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from p2pd.share.merkle import MerkleBuilder, piece_size_for

MiB = 1024 * 1024
READ_BLOCK = MiB  # p2pd.scan.HASH_BLOCK
#: Blocks read ahead of the helper thread at most.
QUEUED_BLOCKS = 4


def sha256_alone(path: Path) -> tuple[str, bytes | None]:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        while block := os.read(fd, READ_BLOCK):
            digest.update(block)
    finally:
        os.close(fd)
    return digest.hexdigest(), None


def one_thread(path: Path) -> tuple[str, bytes | None]:
    digest = hashlib.sha256()
    builder = MerkleBuilder(piece_size_for(path.stat().st_size))
    fd = os.open(path, os.O_RDONLY)
    try:
        while block := os.read(fd, READ_BLOCK):
            digest.update(block)
            builder.update(block)
    finally:
        os.close(fd)
    return digest.hexdigest(), builder.finish().root


def two_threads_fresh_buffers(path: Path) -> tuple[str, bytes | None]:
    """The reading thread hashes each block, a helper feeds the builder: a new buffer a read."""
    digest = hashlib.sha256()
    builder = MerkleBuilder(piece_size_for(path.stat().st_size))
    handed: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUED_BLOCKS)

    def feed() -> None:
        while (block := handed.get()) is not None:
            builder.update(block)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="merkle-leaves") as helper:
        fed = helper.submit(feed)
        fd = os.open(path, os.O_RDONLY)
        try:
            while block := os.read(fd, READ_BLOCK):
                digest.update(block)
                handed.put(block)
        finally:
            handed.put(None)
            os.close(fd)
        fed.result()
    return digest.hexdigest(), builder.finish().root


def two_threads_reused_buffers(path: Path) -> tuple[str, bytes | None]:
    """As above, reading into a ring of buffers that the helper hands back once hashed.

    A fresh 1 MiB buffer a read is mapped and unmapped by malloc each time;
    with two threads every unmap also interrupts the other core (a TLB
    shootdown), which costs more than the hashing gains.
    """
    digest = hashlib.sha256()
    builder = MerkleBuilder(piece_size_for(path.stat().st_size))
    free: queue.Queue[bytearray] = queue.Queue()
    for _ in range(QUEUED_BLOCKS + 1):
        free.put(bytearray(READ_BLOCK))
    handed: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()

    def feed() -> None:
        while (item := handed.get()) is not None:
            buffer, length = item
            builder.update(memoryview(buffer)[:length])
            free.put(buffer)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="merkle-leaves") as helper:
        fed = helper.submit(feed)
        try:
            with path.open("rb", buffering=0) as file:
                while True:
                    buffer = free.get()
                    length = file.readinto(buffer)
                    if not length:
                        break
                    digest.update(memoryview(buffer)[:length])
                    handed.put((buffer, length))
        finally:
            handed.put(None)
        fed.result()
    return digest.hexdigest(), builder.finish().root


WAYS: dict[str, Callable[[Path], tuple[str, bytes | None]]] = {
    "sha256": sha256_alone,
    "one thread": one_thread,
    "two threads, fresh buffers": two_threads_fresh_buffers,
    "two threads, reused buffers": two_threads_reused_buffers,
}


def make_file(folder: Path, size_mib: int) -> Path:
    path = folder / "merkle-cost.bin"
    pattern = os.urandom(MiB)  # sha256's speed does not depend on the bytes
    with path.open("wb") as out:
        for n in range(size_mib):
            out.write(n.to_bytes(8, "big") + pattern[8:])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="MiB (default 1024)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="merkle-cost-", dir=base) as temporary:
        path = make_file(Path(temporary), args.size)
        size = path.stat().st_size
        print(f"{size / MiB:.0f} MiB in {temporary}, read in 1 MiB blocks, {os.cpu_count()} CPUs")
        seconds: dict[str, list[float]] = {name: [] for name in WAYS}
        results: dict[str, tuple[str, bytes | None]] = {}
        for _ in range(args.repeat):
            for name, way in WAYS.items():
                started = time.perf_counter()
                results[name] = way(path)
                seconds[name].append(time.perf_counter() - started)
        sha = results["sha256"][0]
        roots = {results[name][1] for name in WAYS if name != "sha256"}
        if {digest for digest, _ in results.values()} != {sha} or len(roots) != 1:
            raise SystemExit("the ways disagree on the hashes: the benchmark is broken")
        baseline = min(seconds["sha256"])
        for name, runs in seconds.items():
            best = min(runs)
            print(
                f"{name:28} best {size / best / 1e6:7.0f} MB/s  "
                f"median {size / statistics.median(runs) / 1e6:7.0f} MB/s  "
                f"{baseline / best:6.0%} of sha256 alone"
            )


if __name__ == "__main__":
    main()
