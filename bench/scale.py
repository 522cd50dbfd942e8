"""Scale benchmark (issue 13): N virtual peers against real registryd, and real p2pd among them.

    .venv/bin/python -m bench.scale [--quick] [--n 1000 10000] [--json FILE]   (make bench-scale)

For each N and each setup — ``memory`` (one registryd, memory store),
``redis`` (one registryd on a redis-server started here), ``redis×2`` (two
registryd on that one Redis, on two ports with the peers split between them,
or one port with ``--reuse-port``) — it:

1. registers N virtual peers (bench/virtual_peers.py: each its own
   certificate, issued by p2pd's network CA when p2pd has one, its own source
   address, signed requests; several generator processes on raw sockets);
2. runs them for a warm-up interval and a measuring window: heartbeats at the
   interval the registry advises, spread evenly, each followed by
   ``GET /clients?since=V`` only when the answer's ``version`` differs from
   the peer's cursor (a registry without versions: the full list after every
   heartbeat as p2pd did, up to ``--legacy-max`` peers, heartbeats only
   above), plus churn: J peers join (register, then fetch the full list as a
   new p2pd does) and L leave per second (N/1000 each unless ``--churn``).
   The peers start with the cursor of a list fetched after registration: the
   window measures the steady state.  Each heartbeat cycle opens a connection,
   as p2pd's httpx client does (its 5 s keep-alive expiry is shorter than any
   interval); ``--keepalive`` keeps one per peer instead;
3. (memory) two real p2pd, alpha and bravo, are members throughout: alpha's
   RSS with 2 members and with N, its CPU per join/leave, and bravo → alpha's
   first TLS exchange (with bravo's identity) and ``p2pctl ls alpha``;
4. stops that traffic, waits for the registry to be idle, and saturates one
   registry on kept-alive connections: heartbeats, deltas of one interval's
   changes, full lists, churn (leave + register): the per-request constants;
5. at the largest N, memory again without churn (the heartbeat term alone),
   and at the smallest N one registryd vs two on one Redis at saturation,
   alternately, for their throughput ratio.

CPU comes from /proc (utime + stime over the window), latency and bytes from
the generator (answers as received, heads included).  The machine may be
shared: every block says how much CPU other processes took meanwhile.
"""

from __future__ import annotations

import argparse
import contextlib
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

from bench import scale_report as report
from bench.scale_run import SETUP_TEXT, Options, Run
from bench.scale_wire import Issuer, make_certificates, self_check


def churn_of(opts: Options, n: int) -> tuple[float, float]:
    """Joins and leaves per second: as asked, else N/1000 each (10 + 10 at 10 000)."""
    return opts.churn or (max(1.0, n / 1000), max(1.0, n / 1000))


def network_issuer(secret: str, self_signed: bool) -> tuple[Issuer | None, str]:
    """p2pd's network CA for ``secret`` when this p2pd has one: what real members present."""
    from p2pd.tls import identity

    network = getattr(identity, "NetworkCA", None)
    if network is None or self_signed:
        return None, "self-signed (foreign members to a p2pd with a network CA)"
    ca = network.from_secret(secret)
    return (ca.name, ca.key), "issued by the network CA, as p2pd's own"


def run_all(opts: Options) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    secret = "scale-" + secrets.token_hex(12)
    self_check(secret)
    biggest = max(opts.ns)
    started = time.perf_counter()
    churn_rate = max(opts.churn or (biggest / 1000, biggest / 1000))
    spare_count = int(churn_rate * 400) + opts.workers
    issuer, kind = network_issuer(secret, opts.self_signed)
    pairs, key_pem = make_certificates(biggest + spare_count, secrets.token_hex(4), issuer)
    print(
        f"{len(pairs):,} certificates {kind} in {time.perf_counter() - started:.1f} s "
        f"(one key, unique subjects); FastSigner matches p2pcommon.signing.signer.Signer"
    )
    indexed = [(i, pid, pem) for i, (pid, pem) in enumerate(pairs)]
    runs = []
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        plan = [(n, s, opts.peer_ttl, churn_of(opts, n)) for n in opts.ns for s in opts.setups]
        if not opts.quick and opts.churn is None and "memory" in opts.setups:
            # The same without churn: the heartbeat term of the model on its own.
            plan.append((biggest, "memory", opts.peer_ttl, (0.0, 0.0)))
        while plan:
            n, setup, ttl, churn = plan.pop(0)
            workdir = Path(tmp) / f"{n}-{setup}-{ttl}-{churn[0]:g}"
            workdir.mkdir()
            run = Run(
                n, setup, opts, indexed[:n], indexed[biggest:], workdir, secret, ttl, churn, key_pem
            )
            with contextlib.ExitStack() as stack:
                run.start(stack)
                result = run.measure()
            report.print_run(result)
            runs.append(result)
            if (
                not result["generator_kept_up"]
                and setup == "memory"
                and ttl is None
                and not opts.quick
                and n >= 10_000
            ):
                # Brief: then N at a longer interval, clearly labelled.
                print(f"  (the generator did not keep up: {n:,} again with peer_ttl 90)")
                plan.insert(0, (n, setup, 90.0, churn))
        throughput = None
        if "redis×2" in opts.setups:
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
    parser.add_argument("--window", type=float, help="measuring seconds (2 intervals)")
    parser.add_argument("--peer-ttl", type=float, help="registryd peer_ttl (its default)")
    parser.add_argument(
        "--churn", type=float, nargs=2, metavar=("JOINS", "LEAVES"), help="per second (N/1000)"
    )
    parser.add_argument("--legacy-max", type=int, default=2000)
    parser.add_argument("--no-joiner-sync", action="store_true", help="joiners skip the full list")
    parser.add_argument(
        "--keepalive",
        action="store_true",
        help="keep each peer's connection across heartbeats (default: one per heartbeat "
        "cycle, as p2pd's httpx client, whose 5 s keep-alive expiry is shorter than the interval)",
    )
    parser.add_argument("--no-p2pd", action="store_true")
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="redis×2 on one port with reuse_port (default: two ports, peers split exactly)",
    )
    parser.add_argument(
        "--self-signed", action="store_true", help="virtual peers without the network CA"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    return Options(
        ns=args.n or ([200] if quick else [1000, 10_000]),
        setups=args.setups,
        workers=args.workers,
        window=args.window or (4.0 if quick else None),
        # Quick: a 3 s interval, so that a few seconds cover every peer.
        peer_ttl=args.peer_ttl or (9.0 if quick else None),
        churn=tuple(args.churn) if args.churn else None,
        legacy_max=args.legacy_max,
        joiner_sync=not args.no_joiner_sync,
        fresh=not args.keepalive,
        p2pd=not args.no_p2pd,
        sat_seconds=1.5 if quick else 6.0,
        sat_connections=16,
        quick=quick,
        json=args.json,
        self_signed=args.self_signed,
        reuse_port=args.reuse_port,
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
        print("\n== Targets (issue 13)")
        for line in lines:
            print(f"  {line}")
    if opts.json:
        figures = {"runs": runs, "throughput": throughput}
        Path(opts.json).write_text(json.dumps(figures, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
