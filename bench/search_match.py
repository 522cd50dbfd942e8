"""What one search costs a member: p2pd.peer.search.match over a large share index.

.venv/bin/python -m bench.search_match [--entries N] [--repeat R]

Paths are made like a real share's (2 to 5 folders, a file name, an
extension); each query is timed R times over the same listing with its
lowercased paths computed beforehand (what a member keeps per index
generation), and the best and median are printed.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import time
from dataclasses import dataclass

from p2pd.peer.search import build_query, lowered_paths, match

WORDS = [
    "Music",
    "Photos",
    "holiday",
    "Debian",
    "linux",
    "report",
    "Draft",
    "video",
    "backup",
    "2023",
    "2024",
    "notes",
    "ISO",
    "project",
    "alpha",
    "beta",
    "gamma",
    "delta",
    "readme",
    "src",
]
EXTENSIONS = ("mp3", "jpg", "txt", "iso", "pdf", "flac")


@dataclass(frozen=True, slots=True)
class Entry:
    path: str
    size: int
    mtime: float
    sha256: str


def share(count: int) -> list[Entry]:
    rnd = random.Random(23)
    entries = []
    for n in range(count):
        folders = "/".join(
            f"{rnd.choice(WORDS)}{rnd.randrange(100)}" for _ in range(rnd.randrange(2, 6))
        )
        path = f"{folders}/file{n}.{rnd.choice(EXTENSIONS)}"
        digest = hashlib.sha256(path.encode()).hexdigest()
        entries.append(Entry(path, rnd.randrange(10**9), 0.0, digest))
    return sorted(entries, key=lambda entry: entry.path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=60_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    entries = share(args.entries)
    started = time.perf_counter()
    lowered = lowered_paths(entries)
    print(
        f"{len(entries)} entries; lowered paths computed in "
        f"{(time.perf_counter() - started) * 1000:.1f} ms (once per index generation)"
    )
    queries = [
        ("2 terms, few matches", build_query(q="Debian42 iso")),
        ("2 terms, no match", build_query(q="zzz qqq")),
        ("1 term, many matches", build_query(q="music")),
        ("term and exclusion", build_query(q="photos -jpg")),
        ("glob *.flac", build_query(q="*.flac")),
        ("glob, no literal run", build_query(q="[q]*[z]")),
        ("glob, 256 characters", build_query(q="*a" * 127 + "*b")),
        ("sha256 prefix", build_query(sha256=entries[len(entries) // 2].sha256[:8])),
        ("size range", build_query(min_size=10**9 - 10_000)),
        ("8 terms, rare one last", build_query(q="a e i o 1 2 3 q")),
        ("8 terms, rare one first", build_query(q="a e i o u 1 2 zzz")),
    ]
    print(f"{'query':24} {'best ms':>8} {'median ms':>10} {'found':>6} more")
    for label, query in queries:
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            found, more = match(entries, query, lowered=lowered)
            times.append((time.perf_counter() - started) * 1000)
        print(
            f"{label:24} {min(times):8.2f} {statistics.median(times):10.2f} {len(found):6} {more}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
