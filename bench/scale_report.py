"""bench/scale.py's arithmetic and printing: merged generator reports, per-run blocks, verdicts."""

from __future__ import annotations

from collections import Counter
from typing import Any

KINDS = ("register", "heartbeat", "lookup", "resolve", "page", "list", "leave")
LOOKUPS = ("lookup", "resolve", "page", "list")


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    latency: list[float] = []
    lag: list[float] = []
    connect: list[float] = []
    for report in reports:
        counts.update(report["counts"])
        sizes.update(report["bytes"])
        latency += report["latency"]
        lag += report["lag"]
        connect += report["connect"]
    return {"counts": counts, "bytes": sizes, "latency": latency, "lag": lag, "connect": connect}


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def failures(counts: Counter[str]) -> dict[str, int]:
    """Answers other than 200 and exchanges that failed (timeouts, broken connections)."""
    found = {}
    for key, value in counts.items():
        kind, _, outcome = key.partition(" ")
        if kind in KINDS and outcome != "200" and value:
            found[key] = value
    return found


def cpu_shares(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per process group: % of one core over the interval between the two samples."""
    seconds = after["time"] - before["time"]
    shares: dict[str, Any] = {"seconds": seconds}
    for group in ("registries", "workers", "redis", "p2pd", "hostile"):
        pairs = zip(before.get(group, []), after.get(group, []), strict=True)
        values = [100 * (b - a) / seconds for a, b in pairs]
        shares[group] = values
    # Other helpers' tests share the machine: how much CPU they took meanwhile.
    shares["others"] = (
        100 * ((after["machine"] - before["machine"]) - (after["ours"] - before["ours"])) / seconds
    )
    if before.get("redis_commands") is not None:
        shares["redis_commands"] = after["redis_commands"][0] - before["redis_commands"][0]
        shares["redis_calls"] = after["redis_commands"][1] - before["redis_commands"][1]
    return shares


def summarize(
    merged: dict[str, Any], cpu: dict[str, Any], seconds: float | None = None, n: int = 0
) -> dict[str, Any]:
    """Rates over the generator's window ``seconds`` (the CPU shares' own by default)."""
    seconds = seconds or cpu["seconds"]
    counts, sizes = merged["counts"], merged["bytes"]
    heartbeats = counts.get("heartbeat 200", 0)
    requests = sum(v for k, v in counts.items() if k.partition(" ")[0] in KINDS)
    registry_cpu = sum(cpu["registries"]) * cpu["seconds"] / 100
    summary: dict[str, Any] = {
        "window_s": round(seconds, 2),
        "heartbeats_per_s": heartbeats / seconds,
        "p50_ms": _ms(percentile(merged["latency"], 0.5)),
        "p90_ms": _ms(percentile(merged["latency"], 0.9)),
        "p99_ms": _ms(percentile(merged["latency"], 0.99)),
        "max_ms": _ms(max(merged["latency"], default=None)),
        "lag_p99_ms": _ms(percentile(merged["lag"], 0.99)),
        "connect_p99_ms": _ms(percentile(merged["connect"], 0.99)),
        "failures": failures(counts),
        "registry_cpu_pct": [round(v, 1) for v in cpu["registries"]],
        "registry_cpu_pct_total": round(sum(cpu["registries"]), 1),
        "registry_cpu_ms_per_heartbeat": 1000 * registry_cpu / heartbeats if heartbeats else None,
        "registry_cpu_ms_per_request": 1000 * registry_cpu / requests if requests else None,
        "requests": requests,
        "generator_cpu_pct": round(sum(cpu["workers"]), 1),
        "other_processes_cpu_pct": round(max(0.0, cpu["others"]), 1),
        "generator_us_per_request": (
            1e6 * sum(cpu["workers"]) * cpu["seconds"] / 100 / requests if requests else None
        ),
        "bytes_per_s": {k: v / seconds for k, v in sizes.items()},
        "lookup_bytes_per_s": sum(sizes.get(k, 0) for k in LOOKUPS) / seconds,
        "bytes_per_peer_per_s": (
            sum(v for k, v in sizes.items() if k in KINDS) / seconds / n if n else None
        ),
        "lookups_per_s": sum(counts.get(f"{k} 200", 0) for k in LOOKUPS) / seconds,
        "bytes_per_heartbeat_answer": (
            sizes.get("heartbeat", 0) / counts["heartbeat 200"] if heartbeats else None
        ),
        "counts": dict(counts),
    }
    if cpu["redis"]:
        summary["redis_cpu_pct"] = round(cpu["redis"][0], 1)
        summary["redis_commands_per_s"] = cpu["redis_commands"] / cpu["seconds"]
        summary["redis_calls_per_s"] = cpu["redis_calls"] / cpu["seconds"]
    if cpu["p2pd"]:
        summary["p2pd_cpu_pct"] = round(cpu["p2pd"][0], 2)
    if cpu["hostile"]:
        summary["hostile_cpu_pct"] = round(cpu["hostile"][0], 1)
    return summary


def _floor(value: float | None) -> float | None:
    """Net CPU below /proc's 10 ms resolution may come out negative: it is ~0."""
    return None if value is None else max(0.0, value)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(1000 * value, 2)


def _num(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{unit}"


def _bytes(value: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value:.0f} B"


def print_run(run: dict[str, Any]) -> None:
    s = run["steady"]
    print(
        f"\n== N = {run['n']:,} virtual peers, {run['setup']} ({run['setup_text']}); "
        f"heartbeat every {run['interval']:g} s at the end of the registration "
        f"({run['interval_source']}); connections: {run['connections']}; "
        f"window {s['window_s']:g} s; registered in {run['register_s']:g} s"
    )
    fails = s["failures"]
    print(
        f"  heartbeats   {s['heartbeats_per_s']:,.1f}/s (N / interval ≈ "
        f"{run['n'] / run['interval']:,.1f}); p50 {_num(s['p50_ms'], ' ms', 2)}, "
        f"p90 {_num(s['p90_ms'], ' ms', 2)}, p99 {_num(s['p99_ms'], ' ms', 2)}, "
        f"max {_num(s['max_ms'], ' ms', 0)}; failures: "
        f"{', '.join(f'{k} ×{v}' for k, v in fails.items()) or 'none'}"
    )
    c = s["counts"]
    print(
        f"  lookups      {s['lookups_per_s']:,.1f}/s (by id {c.get('lookup 200', 0)}, "
        f"resolutions {c.get('resolve 200', 0)}, pages {c.get('page 200', 0)} in the window; "
        f"mix per heartbeat {run['mix']})"
    )
    per_process = " + ".join(f"{v:.1f}" for v in s["registry_cpu_pct"])
    print(
        f"  registry     CPU {s['registry_cpu_pct_total']:.1f} % of one core ({per_process}); "
        f"{_num(s['registry_cpu_ms_per_request'], ' ms', 3)} per request with all its other "
        f"work; members counted {_num(run['members_counted'], '', 0)}"
    )
    out = s["bytes_per_s"]
    parts = [f"{k} {_bytes(out[k])}/s" for k in KINDS if out.get(k)]
    print(
        f"  bytes out    {'; '.join(parts) or 'none'}; "
        f"{_num(s['bytes_per_peer_per_s'], ' B/s', 1)} per peer; "
        f"{_num(s['bytes_per_heartbeat_answer'], ' B', 0)} per heartbeat answer"
    )
    print(
        f"  churn        {c.get('joins', 0)} joins + {c.get('leaves', 0)} leaves in the window "
        f"(asked {run['churn'][0]:g} + {run['churn'][1]:g}/s; half of the joiners self-signed)"
    )
    if "redis_cpu_pct" in s:
        rate = s["requests"] / s["window_s"]
        per_request = f"{s['redis_calls_per_s'] / rate:.1f}" if rate else "n/a"
        print(
            f"  redis        CPU {s['redis_cpu_pct']:.1f} %; {s['redis_commands_per_s']:,.0f} "
            f"commands/s ({s['redis_calls_per_s']:,.0f} calls incl. inside scripts, "
            f"{per_request} per request)"
        )
    kept = "yes" if run["generator_kept_up"] else "NO (figures above understate the load)"
    print(
        f"  generator    {run['workers']} processes, CPU {s['generator_cpu_pct']:.1f} %, "
        f"{_num(s['generator_us_per_request'], ' µs', 0)} per request; schedule lag p99 "
        f"{_num(s['lag_p99_ms'], ' ms')}; connects {c.get('connects', 0) / s['window_s']:,.0f}/s "
        f"(p99 {_num(s['connect_p99_ms'], ' ms')}); "
        f"answers verified {c.get('answers verified', 0)}, bad "
        f"{c.get('answers with a bad signature', 0)}; kept up: {kept}"
    )
    if any(key.startswith("h-") for key in c):
        _print_hostile(c, s["window_s"], s.get("hostile_cpu_pct"))
    print(
        f"  machine      other processes (not this benchmark's) used "
        f"{s['other_processes_cpu_pct']:.0f} % of a core during the window"
    )
    if run.get("p2pd"):
        _print_p2pd(run["p2pd"])
    for phase in run.get("saturation", []):
        _print_phase(phase)
    for note in run.get("notes", []):
        print(f"  note         {note}")


def _print_hostile(c: dict[str, int], seconds: float, cpu_pct: float | None) -> None:
    """What the hostile generator sent and got (its requests are no peer's)."""
    answers = {
        k: v for k, v in sorted(c.items()) if k.startswith("h-") and "per minute" not in k and v
    }
    lookups = sum(v for k, v in answers.items() if k.startswith("h-lookup "))
    print(
        f"  hostile      identity churn {c.get('h-identities per minute', 0):,} a minute "
        f"(registered and dropped); lookup flood {lookups / seconds:,.0f}/s from one address; "
        f"answers: {', '.join(f'{k} ×{v}' for k, v in answers.items())}; the hostile process "
        f"used {_num(cpu_pct, ' %')} of a core of this machine; the heartbeats above are the "
        f"bystanders'"
    )


def _print_p2pd(p: dict[str, Any]) -> None:
    grew = (p["rss_n_kib"] - p["rss_2_kib"]) / 1024
    print(
        f"  p2pd alpha   RSS {p['rss_2_kib'] / 1024:.1f} MiB with 2 members → "
        f"{p['rss_n_kib'] / 1024:.1f} MiB with {p['members_seen'] + 1:,} (+{grew:.1f} MiB; "
        f"peak {p['hwm_kib'] / 1024:.1f})"
    )
    print(
        f"  p2pd CPU     {p['cpu_pct']:.2f} % over the window = "
        f"{_num(p['cpu_ms_per_change'], ' ms', 2)} per join/leave ({p['changes']} in the window, "
        f"all its CPU counted); net of its idle {p['idle_cpu_ms_per_s']:.2f} ms/s with 2 members: "
        f"{_num(_floor(p['net_cpu_ms_per_change']), ' ms', 2)} per join/leave"
    )
    tries = ", ".join(f"{1000 * h:.1f}/{1000 * a:.1f}" for h, a in p["handshakes"])
    print(
        f"  handshake    bravo → alpha, TLS handshake / first answer (ms): {tries or 'failed'} "
        f"{p.get('handshake_error', '')}; `p2pctl ls alpha` on bravo: "
        f"{_num(p['ls_ms'], ' ms', 0)} {p.get('ls_error', '')}"
    )
    print(
        f"  p2pctl       `--json peers` on alpha: {_num(p.get('peers_ms'), ' ms', 0)} for "
        f"{_num(p.get('peers_listed'), '', 0)} members; a newcomer listed there after "
        f"{_num(p.get('newcomer_s'), ' s', 2)} {p.get('newcomer_error', '')}"
    )


def _print_phase(phase: dict[str, Any]) -> None:
    s = phase["summary"]
    rate = s["requests"] / s["window_s"]
    per = " + ".join(f"{v:.0f}" for v in s["registry_cpu_pct"])
    redis = (
        f"; redis CPU {s['redis_cpu_pct']:.0f} %, "
        f"{s['redis_calls_per_s'] / max(rate, 1e-9):.1f} calls per request"
        if "redis_calls_per_s" in s
        else ""
    )
    fails = ", ".join(f"{k} ×{v}" for k, v in s["failures"].items()) or "none"
    if phase.get("changes"):
        per_change = phase.get("redis_calls_per_change")
        redis += (
            f" = {phase['registry_ms_per_change']:.3f} ms"
            + (f" and {per_change:.1f} Redis calls" if per_change is not None else "")
            + f" per membership change ({phase['changes']} changes)"
        )
    print(
        f"  saturation   {phase['kind']}: {rate:,.0f} requests/s with "
        f"{phase['connections']} connections, p50 {_num(s['p50_ms'], ' ms')}, "
        f"p99 {_num(s['p99_ms'], ' ms')}; "
        f"registry CPU {per} %, {_num(s['registry_cpu_ms_per_request'], ' ms', 3)} per request"
        f"{redis}; generator CPU {s['generator_cpu_pct']:.0f} %; others "
        f"{s['other_processes_cpu_pct']:.0f} %; failures: {fails}"
    )


def print_summary(runs: list[dict[str, Any]]) -> None:
    print("\n== Summary (steady state at the advised interval)")
    header = (
        f"{'N':>7} {'setup':<9} {'every':>6} {'churn':>7} {'hb/s':>8} {'lk/s':>7} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'reg CPU %':>10} {'B/s/peer':>9} {'redis ops/s':>11} {'fail':>6} "
        f"{'gen ok':>6}"
    )
    print(header)
    for run in runs:
        s = run["steady"]
        print(
            f"{run['n']:>7,} {run['setup']:<9} {run['interval']:>5g}s "
            f"{run['churn'][0]:>3g}+{run['churn'][1]:<3g} "
            f"{s['heartbeats_per_s']:>8,.1f} {s['lookups_per_s']:>7,.1f} "
            f"{_num(s['p50_ms'], '', 2):>7} {_num(s['p99_ms'], '', 2):>7} "
            f"{s['registry_cpu_pct_total']:>10.1f} {_num(s['bytes_per_peer_per_s'], '', 1):>9} "
            f"{_num(s.get('redis_commands_per_s'), '', 0):>11} "
            f"{sum(s['failures'].values()):>6} {'yes' if run['generator_kept_up'] else 'NO':>6}"
        )


def generator_capacity(runs: list[dict[str, Any]]) -> str | None:
    """What one core of generator produces, from the heaviest steady run that kept up."""
    kept = [r for r in runs if r["generator_kept_up"] and r["steady"]["heartbeats_per_s"]]
    if not kept:
        return None
    run = max(kept, key=lambda r: r["steady"]["heartbeats_per_s"])
    s = run["steady"]
    per_cycle = s["generator_cpu_pct"] / 100 / s["heartbeats_per_s"]
    at_30 = "" if run["interval"] == 30 else f", {30 / per_cycle:,.0f} at 30 s"
    return (
        f"generator: {1e6 * per_cycle:,.0f} µs of its CPU per heartbeat cycle with all its "
        f"traffic (N = {run['n']:,}, {run['setup']}): one core would drive ≈ "
        f"{1 / per_cycle:,.0f} cycles/s = {run['interval'] / per_cycle:,.0f} peers at "
        f"{run['interval']:g} s{at_30}; this machine's 2 cores also run the registry"
    )


def verdicts(runs: list[dict[str, Any]], throughput: dict[str, Any] | None) -> list[str]:
    """The issue's targets, checked on the runs that measure them."""
    lines = []
    for run in runs:
        if run["n"] < 10_000:
            continue
        s = run["steady"]
        if run["setup"] == "memory" and run["interval_source"] == "advised, defaults":
            ok_cpu = s["registry_cpu_pct_total"] <= 25
            ok_p99 = s["p99_ms"] is not None and s["p99_ms"] < 50
            per_peer = s["bytes_per_peer_per_s"]
            ok_bytes = per_peer is not None and per_peer <= 1000
            lines.append(
                f"one registryd, {run['n']:,} peers, default settings, churn "
                f"{run['churn'][0]:g} + {run['churn'][1]:g}/s: CPU "
                f"{s['registry_cpu_pct_total']:.1f} % (≤ 25 %: {_ok(ok_cpu)}), heartbeat p99 "
                f"{_num(s['p99_ms'], ' ms')} (< 50 ms: {_ok(ok_p99)}), registry bytes "
                f"{_num(per_peer, ' B/s', 1)} per peer (≤ 1 KB/s: {_ok(ok_bytes)})"
            )
            p = run.get("p2pd")
            if p:
                grew = (p["rss_n_kib"] - p["rss_2_kib"]) / 1024
                ls, peers, seen = p.get("ls_ms"), p.get("peers_ms"), p.get("newcomer_s")
                lines.append(
                    f"p2pd with {p['members_seen'] + 1:,} members: RSS +{grew:.1f} MiB "
                    f"(≤ +5: {_ok(grew <= 5)}), `ls` {_num(ls, ' ms', 0)} (≤ 1 s: "
                    f"{_ok(ls is not None and ls <= 1000)}), a newcomer in `peers` after "
                    f"{_num(seen, ' s')} (≤ 5 s: {_ok(seen is not None and seen <= 5)}), "
                    f"`--json peers` of {_num(p.get('peers_listed'), '', 0)} in "
                    f"{_num(peers, ' ms', 0)} (≤ 2 s: {_ok(peers is not None and peers <= 2000)})"
                )
        if run["setup"] == "redis×2":
            per = " + ".join(f"{v:.1f}" for v in s["registry_cpu_pct"])
            lines.append(
                f"two registryd on one Redis, {run['n']:,} peers every {run['interval']:g} s "
                f"({run['interval_source']}): registry CPU {per} %, Redis "
                f"{_num(s.get('redis_commands_per_s'), ' ops/s', 0)} "
                f"({_num(s.get('redis_cpu_pct'), ' %')} CPU), heartbeat p99 "
                f"{_num(s['p99_ms'], ' ms')}, generator kept up: "
                f"{'yes' if run['generator_kept_up'] else 'NO'}"
            )
    if throughput is not None:
        one, two = (_best_rate(throughput[k]) for k in ("one", "two"))
        if one and two:
            lines.append(
                f"two registryd on one Redis (N = {throughput['n']:,}, saturation, best round "
                f"of each): {two:,.0f} vs {one:,.0f} heartbeats/s = {two / one:.2f}×"
            )
    return lines


def _best_rate(phases: list[dict[str, Any]]) -> float | None:
    """The best round: on a shared machine the others' load only ever lowers a rate."""
    rates = [p["requests"] / p["window_s"] for p in phases]
    return max(rates) if rates else None


def print_throughput(block: dict[str, Any]) -> None:
    print(
        f"\n== Throughput at saturation, one registryd vs two on one Redis (N = {block['n']:,}, "
        f"{block['connections_per_registry']} kept-alive connections per registryd, "
        f"heartbeats without pause; rounds alternate)"
    )
    for name in ("one", "two"):
        for s in block[name]:
            rate = s["requests"] / s["window_s"]
            per = " + ".join(f"{v:.0f}" for v in s["registry_cpu_pct"])
            print(
                f"  {name:<4} {rate:>7,.0f} heartbeats/s, p50 {_num(s['p50_ms'], ' ms')}, "
                f"p99 {_num(s['p99_ms'], ' ms')}; registry CPU {per} %, redis "
                f"{s.get('redis_cpu_pct', 0):.0f} %, generator {s['generator_cpu_pct']:.0f} %, "
                f"others {s['other_processes_cpu_pct']:.0f} %; failures "
                f"{sum(s['failures'].values())}"
            )


def _sat_rate(run: dict[str, Any]) -> float | None:
    for phase in run.get("saturation", []):
        if phase["kind"] == "heartbeat":
            s = phase["summary"]
            return float(s["requests"] / s["window_s"])
    return None


def _ok(value: bool) -> str:
    return "met" if value else "MISSED"
