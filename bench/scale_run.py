"""One measured run of bench/scale.py: an N on a setup, its processes, and what they show."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import httpx

from bench import scale_report as report
from bench.scale_procs import (
    Daemon,
    RedisServer,
    Registry,
    cpu_seconds,
    fetch_clients,
    free_port,
    machine_busy_seconds,
    p2pd_idle,
    p2pd_loaded,
    registryd_has,
    start_p2pd,
    start_redis,
    start_registryd,
    stop,
    stop_p2pd,
)
from bench.virtual_peers import worker_main
from p2pcommon.signing.signer import Signer

SETUP_TEXT = {
    "memory": "one registryd, memory store",
    "redis": "one registryd, Redis store",
    "redis×2": "two registryd on one Redis",
}


@dataclass
class Options:
    ns: list[int]
    setups: list[str]
    workers: int
    window: float | None
    peer_ttl: float | None
    churn: tuple[float, float] | None
    legacy_max: int
    joiner_sync: bool
    fresh: bool
    p2pd: bool
    sat_seconds: float
    sat_connections: int
    quick: bool
    json: str | None
    self_signed: bool
    reuse_port: bool


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


class Run:
    """One N on one setup: its processes, generator workers, and measurements."""

    def __init__(
        self,
        n: int,
        setup: str,
        opts: Options,
        certs: list[tuple[int, str, str]],
        spares: list[tuple[int, str, str]],
        workdir: Path,
        secret: str,
        peer_ttl: float | None,
        churn: tuple[float, float],
        key_pem: bytes,
    ) -> None:
        self.n, self.setup, self.opts, self.churn = n, setup, opts, churn
        #: The one key of every virtual peer's certificate: it signs their register proofs.
        self.key_pem = key_pem
        self.certs, self.spares, self.workdir, self.secret = certs, spares, workdir, secret
        self.peer_ttl = peer_ttl
        self.registries: list[Registry] = []
        self.redis: RedisServer | None = None
        self.daemons: list[Daemon] = []
        self.pipes: list[Pipe] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.notes: list[str] = []

    def sample(self) -> dict[str, Any]:
        ours = [r.process.pid for r in self.registries] + [p.pid or 0 for p in self.processes]
        ours += [d.process.pid for d in self.daemons] + [os.getpid()]
        ours += [self.redis.process.pid] if self.redis else []
        return {
            "machine": machine_busy_seconds(),
            "ours": sum(cpu_seconds(pid) for pid in ours),
            "time": time.monotonic(),
            "registries": [cpu_seconds(r.process.pid) for r in self.registries],
            "workers": [cpu_seconds(p.pid or 0) for p in self.processes],
            "redis": [cpu_seconds(self.redis.process.pid)] if self.redis else [],
            "p2pd": [cpu_seconds(self.daemons[0].process.pid)] if self.daemons else [],
            "redis_commands": self.redis.commands() if self.redis else None,
        }

    def command(self, name: str, args: dict[str, Any]) -> None:
        for pipe in self.pipes:
            pipe.send((name, args))

    def collect(self, expected: str, timeout: float) -> list[Any]:
        answers = []
        deadline = time.monotonic() + timeout
        for number, pipe in enumerate(self.pipes):
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise SystemExit(f"scale: generator {number} sent no {expected!r} in time")
            name, value = pipe.recv()
            assert name == expected, (name, expected)
            answers.append(value)
        return answers

    def start(self, stack: contextlib.ExitStack) -> None:
        count = 2 if self.setup == "redis×2" else 1
        store = "memory"
        if self.setup != "memory":
            self.redis = start_redis(self.workdir)
            stack.callback(stop, self.redis.process)
            store = self.redis.url
        extra = {"REGISTRYD_PEER_TTL": f"{self.peer_ttl:g}"} if self.peer_ttl else {}
        shared = count > 1 and self.opts.reuse_port and registryd_has("reuse_port")
        if count > 1 and self.opts.reuse_port and not shared:
            self.notes.append("registryd has no reuse_port key: two ports instead")
        if shared:
            extra["REGISTRYD_REUSE_PORT"] = "true"
            self.notes.append("two registryd share one port with reuse_port (the kernel splits)")
        elif count > 1:
            self.notes.append("two registryd on two ports, the peers split between them")
        port = free_port()
        for _ in range(count):
            registry = start_registryd(self.workdir, self.secret, store, port, extra)
            stack.callback(stop, registry.process)
            self.registries.append(registry)
            port = port if shared else free_port()
        if self.setup == "memory" and self.opts.p2pd:
            for name in ("alpha", "bravo"):
                daemon = start_p2pd(
                    self.workdir / f"{self.n}", name, self.secret, self.registries[0].url
                )
                stack.callback(stop_p2pd, daemon)
                self.daemons.append(daemon)
        # In self.registries' order (one port for all with reuse_port).
        addresses = list(dict.fromkeys(("127.0.0.1", r.port) for r in self.registries))
        context = multiprocessing.get_context("fork")
        workers = self.opts.workers
        for number in range(workers):
            parent, child = context.Pipe()
            process = context.Process(
                target=worker_main,
                args=(
                    number,
                    self.secret,
                    addresses,
                    self.certs[number::workers],
                    self.spares[number::workers],
                    child,
                    self.key_pem,
                ),
                daemon=True,
            )
            process.start()
            stack.callback(self._stop_worker, process, parent)
            self.pipes.append(parent)
            self.processes.append(process)

    @staticmethod
    def _stop_worker(process: multiprocessing.process.BaseProcess, pipe: Pipe) -> None:
        with contextlib.suppress(OSError):
            pipe.send(("stop", {}))
        process.join(timeout=10)
        if process.is_alive():
            process.kill()

    def measure(self) -> dict[str, Any]:
        opts = self.opts
        result: dict[str, Any] = {
            "n": self.n,
            "setup": self.setup,
            "setup_text": SETUP_TEXT[self.setup],
        }
        small = None
        if self.daemons:
            alpha, bravo = self.daemons
            small = p2pd_idle(alpha, bravo, 2.0 if opts.quick else 5.0)
        self.command("register", {"fresh": opts.fresh})
        setups = self.collect("registered", 120 + self.n / 50)
        registered = sum(s["ok"] for s in setups)
        if registered < self.n:
            self.notes.append(f"only {registered} of {self.n} virtual peers registered")
        clients, list_bytes = fetch_clients(self.registries[0].url, self.secret)
        members = len(clients["clients"])
        version = clients.get("version")
        if version is not None:
            sync = "delta"
        elif self.n <= opts.legacy_max:
            sync = "legacy"
            self.notes.append(
                "registryd has no membership version: full list after every heartbeat"
            )
        else:
            sync = "none"
            self.notes.append(
                f"registryd has no membership version and N > --legacy-max {opts.legacy_max}: "
                "the virtual peers only heartbeat (a full list per heartbeat is far past "
                "saturation)"
            )
        interval = min(s["interval"] for s in setups if s["ok"])
        churn = self.churn
        window = opts.window or max(10.0, 2 * interval)
        start = time.monotonic() + 0.5
        w0 = start + interval + 1
        w1 = w0 + window
        self.command(
            "run",
            {
                "sync": sync,
                "joiner_sync": opts.joiner_sync,
                "interval": interval,
                "cursor": version,
                "start": start,
                "total": self.n,
                "window": (w0, w1),
                "joins": churn[0] / opts.workers,
                "leaves": churn[1] / opts.workers,
            },
        )
        sleep_until(w0)
        before = self.sample()
        # The cursor of a peer that heartbeats now: the delta it will ask for
        # next time covers one interval of changes, the saturation phase's size.
        sleep_until(max(w0, w1 - interval))
        # In a thread: an overloaded registry must not delay the window's end.
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self._delta, version) if version is not None else None
            sleep_until(w1)
            after = self.sample()
            probe = pending.result() if pending is not None else None
        typical = probe[2] if probe is not None else None
        if probe is None and version is not None:
            self.notes.append("the registry did not answer the cursor probe: no delta phase")
        cpu = report.cpu_shares(before, after)
        merged = report.merge(self.collect("report", 60))
        steady = report.summarize(merged, cpu, seconds=w1 - w0)
        lag_ok = steady["lag_p99_ms"] is not None and steady["lag_p99_ms"] < min(
            500, 100 * interval
        )
        skipped = steady["counts"].get("beats skipped: previous cycle still running", 0)
        result.update(
            interval=interval,
            interval_source="advised"
            if self.peer_ttl is None or opts.quick
            else f"peer_ttl {self.peer_ttl:g}",
            sync=sync,
            churn=churn,
            workers=opts.workers,
            steady=steady,
            connections="one per heartbeat cycle" if opts.fresh else "kept alive",
            members_listed=members,
            full_list_bytes=list_bytes,
            bytes_per_record=list_bytes / members if members else None,
            generator_kept_up=lag_ok and skipped == 0,
        )
        if small is not None:
            changes = steady["counts"].get("joins", 0) + steady["counts"].get("leaves", 0)
            alpha, bravo = self.daemons
            p2pd_loaded(alpha, bravo, small, cpu, changes)
            result["p2pd"] = small
        # Steady traffic stops and what is in flight ends (or times out) before
        # the saturation phases, which must not count its answers or failures.
        self.command("quiesce", {})
        self.collect("quiet", 60)
        busy = self.wait_idle()
        if busy > 2:
            self.notes.append(
                f"the registry worked off its backlog for {busy:.0f} s after the window"
            )
        result["saturation"] = self.saturate(typical)
        for registry in self.registries:
            if registry.process.poll() is not None:
                self.notes.append(
                    f"registryd on {registry.port} exited ({registry.process.returncode})"
                )
        result["notes"] = self.notes
        return result

    def wait_idle(self, limit: float = 30) -> float:
        """Seconds until the registries use < 20 % of a core (a backlog drained)."""
        started = time.monotonic()
        while time.monotonic() - started < limit:
            before = sum(cpu_seconds(r.process.pid) for r in self.registries)
            time.sleep(0.5)
            if sum(cpu_seconds(r.process.pid) for r in self.registries) - before < 0.1:
                break
        return time.monotonic() - started

    def hammer(
        self,
        kind: str,
        seconds: float,
        per_worker: int,
        since: int | None = None,
        targets: list[int] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """One saturation phase: its summary and its CPU shares."""
        w0 = time.monotonic() + 0.5
        w1 = w0 + seconds
        self.command(
            "hammer",
            {
                "kind": kind,
                "since": since,
                "connections": per_worker,
                "window": (w0, w1),
                "registries": targets,
            },
        )
        sleep_until(w0)
        before = self.sample()
        sleep_until(w1)
        after = self.sample()
        merged = report.merge(self.collect("report", 60))
        shares = report.cpu_shares(before, after)
        time.sleep(1)  # the last requests of the phase finish
        return report.summarize(merged, shares), shares

    def throughput(self, rounds: int) -> dict[str, Any]:
        """Heartbeats/s at saturation on one registryd, then on both, alternately."""
        self.command("register", {"fresh": False})
        self.collect("registered", 120 + self.n / 50)
        per_worker = max(1, -(-self.opts.sat_connections // self.opts.workers))
        phases: dict[str, list[dict[str, Any]]] = {"one": [], "two": []}
        for _ in range(rounds):
            for name, targets in (("one", [0]), ("two", [0, 1])):
                summary, _ = self.hammer(
                    "heartbeat", self.opts.sat_seconds, per_worker * len(targets), targets=targets
                )
                phases[name].append(summary)
        return {"n": self.n, "connections_per_registry": per_worker * self.opts.workers, **phases}

    def saturate(self, since: int | None) -> list[dict[str, Any]]:
        # Heartbeats first (the leases are fresh), deltas before churn (whose
        # changes would grow them).
        # Two registryd: their throughput is compared on its own (``throughput``).
        if len(self.registries) > 1:
            return []
        kinds = ["heartbeat", *(["delta"] if since is not None else []), "list", "churn"]
        phases = []
        for kind in kinds:
            seconds = self.opts.sat_seconds * (1 if kind == "heartbeat" else 0.6)
            total = self.opts.sat_connections * len(self.registries)
            if kind in ("list", "delta") and self.n >= 5000:
                total = min(total, 4)  # megabyte answers: a few connections saturate it
            per_worker = max(1, -(-total // self.opts.workers))
            phase: dict[str, Any] = {"kind": kind, "connections": per_worker * self.opts.workers}
            if kind == "delta":
                entries, size, _ = self._delta(since) or (0, 0, None)
                phase.update(entries=entries, answer_bytes=size)
            summary, shares = self.hammer(kind, seconds, per_worker, since)
            phase["summary"] = summary
            if kind == "churn":
                # A register after a leave is a join, whether the leave found the member or not.
                changes = summary["counts"].get("leave 200", 0) + summary["counts"].get(
                    "register 200", 0
                )
                phase["changes"] = changes
                if changes:
                    cpu_s = sum(shares["registries"]) * shares["seconds"] / 100
                    phase["registry_ms_per_change"] = 1000 * cpu_s / changes
                    if "redis_calls" in shares:
                        phase["redis_calls_per_change"] = shares["redis_calls"] / changes
            phases.append(phase)
        return phases

    def _delta(self, since: int | None, timeout: float = 10) -> tuple[int, int, int | None] | None:
        """(entries, bytes, version) of a ``GET /clients?since=`` fetched here;
        None when an overloaded registry does not answer in time."""
        signer = Signer(self.secret)
        headers, _ = signer.sign_request("GET", "/clients", b"", now=time.time())
        try:
            answer = httpx.get(
                f"{self.registries[0].url}/clients?since={since}", headers=headers, timeout=timeout
            )
            body = json.loads(answer.content)
        except (httpx.HTTPError, ValueError):
            return None
        entries = len(body.get("clients", [])) + len(body.get("left", []))
        return entries, len(answer.content), body.get("version")
