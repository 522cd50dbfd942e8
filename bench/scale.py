"""Scale benchmark (issues 13, 22): N virtual peers against real registryd, real p2pd among them.

    .venv/bin/python -m bench.scale [--quick] [--n 10000] [--setups memory redis×2] [--json FILE]
    (make bench-scale)

For each N and each setup — ``memory`` (one registryd, memory store),
``redis`` (one registryd on a redis-server started here), ``redis×2`` (two
registryd on that one Redis, on two ports with the peers split between them,
or one port with ``--reuse-port``) — it:

1. registers N virtual peers (bench/virtual_peers.py: each its own
   certificate issued by p2pd's network CA, its own source address, signed
   requests; several generator processes on raw sockets).  Each heartbeats
   from its register on at the interval its last lease answer advised: the
   registry sets the pace (docs/protocol.md §3.3), so the interval grows
   with N;
2. once every peer has heartbeaten at the pace of N, measures a window
   (at least 1.2 intervals): heartbeats, lookups by id after a share of them
   (``--mix``: as p2pd admitting or dialling a member), fewer resolutions
   and pages, and churn: J peers join and L leave per second (N/1000 each
   unless ``--churn``), half of the joiners self-signed (foreign members).
   Each heartbeat cycle opens a connection unless ``--keepalive``;
3. (memory) two real p2pd, alpha and bravo, are members throughout: alpha's
   RSS with 2 members and with N, its CPU per join/leave, bravo → alpha's
   first TLS exchange and ``p2pctl ls alpha``, alpha's ``p2pctl --json
   peers``, and how long a member that just joined takes to show there;
4. stops that traffic and saturates one registry on kept-alive connections
   with each kind of request: heartbeats, lookups, resolutions, pages of
   1 000, the whole list, churn (leave + register): the per-request costs;
5. with ``redis×2``, at the smallest N, one registryd vs two on one Redis at
   saturation, alternately, for their throughput ratio.

With ``--hostile`` a third generator process (bench/hostile_peers.py) runs
issue 22's attackers during the window, beside the peers whose heartbeats are
then the bystanders': a member registering and dropping 1 000 self-signed
identities a minute (``--identities``) and a lookup flood from one address
(``--flood-rate``); registries keep their per-source limits, and the
saturation phases (which need them off) are skipped.

CPU comes from /proc (utime + stime over the window), latency and bytes from
the generator (answers as received, heads included), Redis operations from
INFO.  The machine may be shared: every block says how much CPU other
processes took meanwhile.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric import ec

from bench import scale_report as report
from bench.scale_run import SETUP_TEXT, Options, Run
from bench.scale_wire import Issuer, load_key, make_certificates, self_check


def churn_of(opts: Options, n: int) -> tuple[float, float]:
    """Joins and leaves per second: as asked, else N/1000 each (10 + 10 at 10 000)."""
    return opts.churn or (max(1.0, n / 1000), max(1.0, n / 1000))


def network_issuer(secret: str) -> Issuer:
    """p2pd's network CA for ``secret``: what its own members present."""
    from p2pd.tls.identity import NetworkCA

    ca = NetworkCA.from_secret(secret)
    return ca.name, ca.key


def certificates(count: int, spares: int, secret: str) -> tuple[list[tuple[int, str, str]], bytes]:
    """``count`` members' certificates issued by the network CA, then ``spares`` for the
    joiners, every other one self-signed; all with one key (it proves their registers)."""
    key = ec.generate_private_key(ec.SECP256R1())
    salt = secrets.token_hex(4)
    issuer = network_issuer(secret)
    issued, key_pem = make_certificates(count + spares - spares // 2, salt, issuer, key)
    foreign, _ = make_certificates(spares // 2, salt + "f", None, key)
    pairs = issued[:count]
    for own, self_signed in itertools.zip_longest(issued[count:], foreign):
        pairs += [pair for pair in (own, self_signed) if pair is not None]
    return [(i, pid, pem) for i, (pid, pem) in enumerate(pairs)], key_pem


def run_all(opts: Options) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    secret = "scale-" + secrets.token_hex(12)
    self_check(secret)
    biggest = max(opts.ns)
    started = time.perf_counter()
    churn_rate = max(opts.churn or (biggest / 1000, biggest / 1000))
    # The window and the warm-up are a few minutes at most at 10 000 and more.
    spare_count = int(churn_rate * 600) + opts.workers + 1
    indexed, key_pem = certificates(biggest, spare_count, secret)
    print(
        f"{len(indexed):,} certificates in {time.perf_counter() - started:.1f} s (one key, "
        f"unique subjects; members' issued by the network CA, the joiners' half self-signed); "
        f"FastSigner matches p2pcommon.signing.signer.Signer"
    )
    hostile: list[tuple[int, str, str]] = []
    if opts.hostile:
        # The identity churn's, self-signed, over the longest window.
        count = int(opts.identities_per_minute / 60 * (opts.window or 600)) + 100
        made, _ = make_certificates(count, secrets.token_hex(4) + "h", None, load_key(key_pem))
        hostile = [(10_000_000 + i, pid, pem) for i, (pid, pem) in enumerate(made)]
    runs = []
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        for n in opts.ns:
            for setup in opts.setups:
                workdir = Path(tmp) / f"{n}-{setup}"
                workdir.mkdir()
                run = Run(
                    n,
                    setup,
                    opts,
                    indexed[:n],
                    indexed[biggest:],
                    workdir,
                    secret,
                    opts.peer_ttl,
                    churn_of(opts, n),
                    key_pem,
                    hostile=list(hostile),
                )
                with contextlib.ExitStack() as stack:
                    run.start(stack)
                    result = run.measure()
                report.print_run(result)
                runs.append(result)
        throughput = None
        if "redis×2" in opts.setups and not (opts.no_throughput or opts.hostile):
            n = min(opts.ns)
            workdir = Path(tmp) / "throughput"
            workdir.mkdir()
            run = Run(
                n, "redis×2", opts, indexed[:n], [], workdir, secret, None, (0.0, 0.0), key_pem
            )
            with contextlib.ExitStack() as stack:
                run.start(stack)
                throughput = run.throughput(1 if opts.quick else 2)
            report.print_throughput(throughput)
    return runs, throughput


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 200, a few seconds each")
    parser.add_argument("--n", type=int, nargs="+", help="numbers of virtual peers")
    parser.add_argument("--setups", nargs="+", choices=list(SETUP_TEXT), default=list(SETUP_TEXT))
    parser.add_argument("--workers", type=int, default=2, help="generator processes")
    parser.add_argument("--window", type=float, help="measuring seconds (1.2 intervals)")
    parser.add_argument("--peer-ttl", type=float, help="registryd peer_ttl (its default)")
    parser.add_argument(
        "--max-interval", type=float, help="registryd max_heartbeat_interval (its default)"
    )
    parser.add_argument("--budget", type=float, help="registryd heartbeat_budget (its default)")
    parser.add_argument(
        "--churn", type=float, nargs=2, metavar=("JOINS", "LEAVES"), help="per second (N/1000)"
    )
    parser.add_argument(
        "--mix",
        type=float,
        nargs=3,
        metavar=("LOOKUPS", "RESOLVES", "PAGES"),
        default=(0.2, 0.02, 0.0005),
        help="shares of the heartbeats followed by each (0.2 0.02 0.0005)",
    )
    parser.add_argument(
        "--keepalive",
        action="store_true",
        help="keep each peer's connection across heartbeats (default: one per heartbeat cycle)",
    )
    parser.add_argument("--no-p2pd", action="store_true")
    parser.add_argument("--no-throughput", action="store_true", help="skip one vs two registryd")
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="redis×2 on one port with reuse_port (default: two ports, peers split exactly)",
    )
    parser.add_argument(
        "--hostile",
        action="store_true",
        help="during the window, a member churning 1 000 self-signed identities a minute and a "
        "lookup flood from one address; registries keep their per-source limits (no saturation)",
    )
    parser.add_argument(
        "--flood-rate", type=float, default=1000.0, help="--hostile's lookups/s (1000)"
    )
    parser.add_argument(
        "--identities",
        type=float,
        default=1000.0,
        help="--hostile's self-signed identities registered and dropped a minute (1000; 0: none)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    lookups, resolves, pages = args.mix
    return Options(
        ns=args.n or ([200] if quick else [10_000]),
        setups=args.setups,
        workers=args.workers,
        window=args.window or (4.0 if quick else None),
        # Quick: a 3 s interval, so that a few seconds cover every peer.
        peer_ttl=args.peer_ttl or (9.0 if quick else None),
        max_interval=args.max_interval,
        budget=args.budget,
        churn=tuple(args.churn) if args.churn else None,
        mix={"lookups": lookups, "resolves": resolves, "pages": pages},
        fresh=not args.keepalive,
        p2pd=not args.no_p2pd,
        sat_seconds=1.5 if quick else 6.0,
        sat_connections=16,
        quick=quick,
        json=args.json,
        reuse_port=args.reuse_port,
        no_throughput=args.no_throughput,
        hostile=args.hostile,
        flood_rate=args.flood_rate,
        identities_per_minute=args.identities,
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    print(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"N = {', '.join(f'{n:,}' for n in opts.ns)}; setups: {', '.join(opts.setups)}; "
        f"{opts.workers} generator processes{'; QUICK smoke run' if opts.quick else ''}"
    )
    runs, throughput = run_all(opts)
    report.print_summary(runs)
    capacity = report.generator_capacity(runs)
    if capacity:
        print(f"\n{capacity}")
    lines = report.verdicts(runs, throughput)
    if lines:
        print("\n== Targets (issue 22)")
        for line in lines:
            print(f"  {line}")
    if opts.json:
        figures = {"runs": runs, "throughput": throughput}
        Path(opts.json).write_text(json.dumps(figures, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
