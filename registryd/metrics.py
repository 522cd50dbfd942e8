"""Prometheus metrics of one registryd process (never the secret, never member data)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# The *_created series double the output and tell a scraper nothing it needs.
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class RegistryMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.members = Gauge("registry_members", "Members with a live lease", registry=r)
        self.store_up = Gauge(
            "registry_store_up", "1 while the store answers, 0 while it is away", registry=r
        )
        self.store_up.set(1)
        self.registrations = Counter(
            "registry_registrations", "Successful POST /register", registry=r
        )
        self.heartbeats = Counter("registry_heartbeats", "Successful POST /heartbeat", registry=r)
        self.leaves = Counter("registry_leaves", "Members that left with POST /leave", registry=r)
        self.expiries = Counter(
            "registry_expiries", "Members dropped when their lease ran out", registry=r
        )
        self.auth_failures = Counter(
            "registry_auth_failures", "Requests refused by authentication", ["reason"], registry=r
        )
        self.rate_limited = Counter(
            "registry_rate_limited", "Failing requests answered 429", registry=r
        )
        self.new_members_limited = Counter(
            "registry_new_members_limited",
            "Registers of new ids answered 429: too many new ids from one source",
            registry=r,
        )
        self.wrong_leases = Counter(
            "registry_wrong_leases",
            "Heartbeats and leaves answered 403: not the member's lease",
            registry=r,
        )
        self.shed = Counter(
            "registry_shed",
            "Requests answered 503 before any work: too many in progress in this process",
            registry=r,
        )
        self.lookups = Counter(
            "registry_lookups",
            "GET /members/<id> answered, by outcome (found, unknown)",
            ["outcome"],
            registry=r,
        )
        self.resolves = Counter("registry_resolves", "GET /resolve/<text> answered 200", registry=r)
        self.pages = Counter("registry_pages", "GET /members pages answered 200", registry=r)
        self.lookups_limited = Counter(
            "registry_lookups_limited",
            "Lookups answered 429: too many from one source",
            registry=r,
        )
        self.heartbeat_interval = Gauge(
            "registry_heartbeat_interval_seconds",
            "The heartbeat interval advised now, before its jitter",
            registry=r,
        )
        self.processes = Gauge(
            "registry_processes", "Registry processes sharing this store", registry=r
        )
        self.processes.set(1)
        self.latency = Histogram(
            "registry_request_duration_seconds",
            "Time to answer a request, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
