"""One measured run of bench/scale.py: an N on a setup, its processes, and what they show."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

from bench import scale_report as report
from bench.hostile_peers import hostile_main
from bench.scale_procs import (
    Daemon,
    RedisServer,
    Registry,
    cpu_seconds,
    free_port,
    machine_busy_seconds,
    newcomer_visible,
    p2pd_idle,
    p2pd_loaded,
    registry_metric,
    registryd_has,
    start_p2pd,
    start_redis,
    start_registryd,
    stop,
    stop_p2pd,
)
from bench.virtual_peers import worker_main

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
    max_interval: float | None
    budget: float | None
    churn: tuple[float, float] | None
    #: Shares of the heartbeats followed by a lookup, a resolution, a page.
    mix: dict[str, float]
    fresh: bool
    p2pd: bool
    sat_seconds: float
    sat_connections: int
    quick: bool
    json: str | None
    reuse_port: bool
    no_throughput: bool = False
    #: A hostile generator beside the peers (bench/hostile_peers.py).
    hostile: bool = False
    flood_rate: float = 1000.0
    identities_per_minute: float = 1000.0


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
        hostile: list[tuple[int, str, str]] | None = None,
    ) -> None:
        self.n, self.setup, self.opts, self.churn = n, setup, opts, churn
        #: The hostile member's identities (``--hostile``), self-signed.
        self.hostile = hostile or []
        #: The one key of every virtual peer's certificate: it signs their register proofs.
        self.key_pem = key_pem
        self.certs, self.spares, self.workdir, self.secret = certs, spares, workdir, secret
        #: A spare certificate kept out of the generator: the newcomer p2pd must see.
        self.spare_for_p2pd = spares.pop() if spares else None
        self.peer_ttl = peer_ttl
        self.registries: list[Registry] = []
        self.redis: RedisServer | None = None
        self.daemons: list[Daemon] = []
        self.pipes: list[Pipe] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.hostile_process: multiprocessing.process.BaseProcess | None = None
        self.notes: list[str] = []

    def sample(self) -> dict[str, Any]:
        ours = [r.process.pid for r in self.registries] + [p.pid or 0 for p in self.processes]
        ours += [d.process.pid for d in self.daemons] + [os.getpid()]
        ours += [self.redis.process.pid] if self.redis else []
        ours += [self.hostile_process.pid or 0] if self.hostile_process else []
        return {
            "machine": machine_busy_seconds(),
            "ours": sum(cpu_seconds(pid) for pid in ours),
            "time": time.monotonic(),
            "registries": [cpu_seconds(r.process.pid) for r in self.registries],
            "workers": [cpu_seconds(p.pid or 0) for p in self.processes],
            "redis": [cpu_seconds(self.redis.process.pid)] if self.redis else [],
            "p2pd": [cpu_seconds(self.daemons[0].process.pid)] if self.daemons else [],
            "hostile": [cpu_seconds(self.hostile_process.pid or 0)] if self.hostile_process else [],
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
        if self.opts.max_interval:
            extra["REGISTRYD_MAX_HEARTBEAT_INTERVAL"] = f"{self.opts.max_interval:g}"
        if self.opts.budget:
            extra["REGISTRYD_HEARTBEAT_BUDGET"] = f"{self.opts.budget:g}"
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
            registry = start_registryd(
                self.workdir, self.secret, store, port, extra, limits=self.opts.hostile
            )
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
        if self.opts.hostile:
            parent, child = context.Pipe()
            args = (workers, self.secret, addresses[:1], self.hostile, child, self.key_pem)
            process = context.Process(
                target=hostile_main,
                args=(*args, self.opts.flood_rate, self.opts.identities_per_minute),
                daemon=True,
            )
            process.start()
            stack.callback(self._stop_worker, process, parent)
            self.pipes.append(parent)
            # Out of ``processes``: the generator's CPU per request is the peers' alone.
            self.hostile_process = process
            self.notes.append(
                "hostile: registries keep their per-source limits; no saturation phases"
            )

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
        started = time.monotonic()
        self.command("register", {"fresh": opts.fresh})
        setups = self.collect("registered", 120 + self.n / 50)
        registered = sum(s["ok"] for s in setups)
        result["register_s"] = round(time.monotonic() - started, 1)
        if registered < self.n:
            self.notes.append(f"only {registered} of {self.n} virtual peers registered")
        # The pace the registry advises now (the last registers' answers).
        interval = max(s["interval"] for s in setups if s["ok"])
        churn = self.churn
        # Every peer heartbeats once at the pace of N before the window opens.
        warmup = 1.15 * interval + 2
        window = opts.window or max(20.0, 1.2 * interval)
        start = time.monotonic() + 0.5
        w0 = start + warmup
        w1 = w0 + window
        self.command(
            "run",
            {
                "mix": opts.mix,
                "start": start,
                "window": (w0, w1),
                "joins": churn[0] / opts.workers,
                "leaves": churn[1] / opts.workers,
            },
        )
        sleep_until(w0)
        before = self.sample()
        sleep_until(w1)
        after = self.sample()
        cpu = report.cpu_shares(before, after)
        merged = report.merge(self.collect("report", 60))
        steady = report.summarize(merged, cpu, seconds=w1 - w0, n=self.n)
        lag_ok = steady["lag_p99_ms"] is not None and steady["lag_p99_ms"] < 500
        skipped = steady["counts"].get("beats skipped: previous cycle still running", 0)
        members = registry_metric(self.registries[0].url, "registry_members")
        result.update(
            interval=interval,
            interval_source=self._interval_source(),
            churn=churn,
            mix=opts.mix,
            workers=opts.workers,
            steady=steady,
            connections="one per heartbeat cycle" if opts.fresh else "kept alive",
            members_counted=members,
            generator_kept_up=lag_ok and skipped == 0,
        )
        if small is not None:
            changes = steady["counts"].get("joins", 0) + steady["counts"].get("leaves", 0)
            alpha, bravo = self.daemons
            p2pd_loaded(alpha, bravo, small, cpu, changes)
            url = self.registries[0].url
            newcomer_visible(alpha, url, self.secret, self.spare_for_p2pd, self.key_pem, small)
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
        result["saturation"] = [] if opts.hostile else self.saturate()
        for registry in self.registries:
            if registry.process.poll() is not None:
                self.notes.append(
                    f"registryd on {registry.port} exited ({registry.process.returncode})"
                )
        result["notes"] = self.notes
        return result

    def _interval_source(self) -> str:
        knobs = []
        if self.peer_ttl and not self.opts.quick:
            knobs.append(f"peer_ttl {self.peer_ttl:g}")
        if self.opts.max_interval:
            knobs.append(f"max_heartbeat_interval {self.opts.max_interval:g}")
        if self.opts.budget:
            knobs.append(f"heartbeat_budget {self.opts.budget:g}")
        return "advised, defaults" if not knobs else "advised, " + ", ".join(knobs)

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
        self, kind: str, seconds: float, per_worker: int, targets: list[int] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """One saturation phase: its summary and its CPU shares."""
        w0 = time.monotonic() + 0.5
        w1 = w0 + seconds
        self.command(
            "hammer",
            {
                "kind": kind,
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

    def saturate(self) -> list[dict[str, Any]]:
        """Each kind of request without pause on kept-alive connections: its cost."""
        # Two registryd: their throughput is compared on its own (``throughput``).
        if len(self.registries) > 1:
            return []
        phases = []
        for kind in ("heartbeat", "lookup", "resolve", "page", "list", "churn"):
            seconds = self.opts.sat_seconds * (1 if kind == "heartbeat" else 0.6)
            total = self.opts.sat_connections * len(self.registries)
            if kind in ("list", "page") and self.n >= 5000:
                total = min(total, 4)  # large answers: a few connections saturate it
            per_worker = max(1, -(-total // self.opts.workers))
            phase: dict[str, Any] = {"kind": kind, "connections": per_worker * self.opts.workers}
            summary, shares = self.hammer(kind, seconds, per_worker)
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
