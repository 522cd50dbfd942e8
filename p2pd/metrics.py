"""Prometheus metrics of one p2pd: GET /metrics on ``metrics_listen`` (off by default).

The numbers are read from the daemon's live state at each scrape by a
custom collector, not kept twice: the peer server's ``UploadStats``, the
transfers in progress, the share's index, and the failures contained by
``p2pcommon.boundary``.  Only the time of the last scan is watched here, as
the share keeps no clock.  Nothing in the output names a file, a member or
the secret.  Plain HTTP: the key's documentation says to keep it local.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from p2pcommon import boundary
from p2pcommon.http.events import Request, Response, error_response
from p2pcommon.http.server import HttpServer, Limits
from p2pcommon.lifecycle import StartupError
from p2pcommon.models import split_host_port
from p2pd.fetch.downloads import Downloads
from p2pd.membership.directory import Directory
from p2pd.peer.server import PeerServer
from p2pd.share.watching import Share

log = logging.getLogger("p2pd.metrics")

KEY: Final = "metrics_listen"
#: A scraper or two on a local address: a few connections are plenty, and a
#: bound keeps a runaway client from holding the daemon's file descriptors.
LIMITS: Final = Limits(
    max_body_bytes=0, idle_timeout=60.0, request_timeout=10.0, max_connections=16
)


class BindError(StartupError):
    """The metrics address cannot be listened on; the message names the key."""


async def open_listeners(address: str) -> list[trio.SocketListener]:
    host, port = split_host_port(address)
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise BindError(
            f"cannot listen on {address} (key '{KEY}'): {exc.strerror or exc}; "
            f"choose a free local port, or leave '{KEY}' empty to serve no metrics"
        ) from None


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _by_label(family: CounterMetricFamily, label_values: Mapping[str, int]) -> CounterMetricFamily:
    for label, value in sorted(label_values.items()):
        family.add_metric([label], value)
    return family


class PeerCollector(Collector):
    def __init__(self, metrics: PeerMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        stats = m.server.stats
        yield _counter(
            "p2pd_uploaded_bytes", "File bytes sent to other members", stats.served_bytes
        )
        yield _counter(
            "p2pd_uploaded_files",
            "Uploads sent to the end (whole files or ranges)",
            stats.served_files,
        )
        yield _gauge("p2pd_uploads_active", "Uploads in progress", stats.active)
        yield _gauge("p2pd_upload_slots", "Concurrent uploads allowed", m.server.upload_slots)
        yield _counter(
            "p2pd_listing_requests", "GET /files requests answered", stats.listings_served
        )
        yield _counter(
            "p2pd_search_requests", "GET /search requests answered", m.server.search.searches
        )
        refused = {"busy": stats.refused_busy, **stats.refused}
        yield _by_label(
            CounterMetricFamily(
                "p2pd_refused",
                "Peer connections or requests refused, by reason",
                labels=["reason"],
            ),
            refused,
        )

        downloads = m.downloads
        yield _gauge(
            "p2pd_downloads_active", "Downloads queued or in progress", len(downloads.active)
        )
        yield _counter(
            "p2pd_downloaded_bytes", "File bytes received from members", downloads.received_bytes
        )
        family = CounterMetricFamily(
            "p2pd_transfers", "Finished downloads, by outcome", labels=["outcome"]
        )
        # Every outcome of the contract, so that a rate() over each exists from the start.
        yield _by_label(family, {"ok": 0, "failed": 0, "cancelled": 0, **downloads.outcomes})

        share = m.share
        index = share.index
        yield _gauge("p2pd_shared_files", "Files in the share's index", len(index))
        yield _gauge(
            "p2pd_shared_bytes",
            "Bytes of the files in the share's index",
            sum(entry.size for entry in index.listing()),
        )
        yield _gauge("p2pd_share_indexing", "1 while the share is being scanned", share.indexing)
        if m.last_scan is not None:
            yield _gauge(
                "p2pd_share_last_scan_timestamp_seconds",
                "When the last successful scan of the share ended (Unix time)",
                m.last_scan,
            )
        yield _gauge(
            "p2pd_members",
            "Other members, as the registry counted them at the last heartbeat",
            m.directory.peers,
        )
        yield _gauge("p2pd_registered", "1 while registered with a registry", m.registered())
        yield _by_label(
            CounterMetricFamily(
                "p2pd_contained_failures",
                "Units of work that failed and were contained (see the log), by kind",
                labels=["kind"],
            ),
            dict(m.failures),
        )


class PeerMetrics:
    """The collector's sources, the last-scan watcher and the HTTP server."""

    def __init__(
        self,
        server: PeerServer,
        downloads: Downloads,
        share: Share,
        directory: Directory,
        registered: Callable[[], bool],
        *,
        failures: Mapping[str, int] = boundary.failures,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.server = server
        self.downloads = downloads
        self.share = share
        self.directory = directory
        self.registered = registered
        self.failures = failures
        self._clock = clock
        #: When the last successful scan ended; None until one has.
        self.last_scan: float | None = None
        # auto_describe=False: describing would run a whole collect() at registration.
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PeerCollector(self))
        self.http = HttpServer(self.handle, LIMITS)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def handle(self, request: Request) -> Response:
        if request.path != "/metrics":
            return error_response(404, "not found", "the only route is /metrics")
        # HEAD is answered by the server itself, from the GET answer without its body.
        if request.method not in ("GET", "HEAD"):
            return error_response(
                405, "method not allowed", "/metrics takes GET", [("Allow", "GET, HEAD")]
            )
        return Response(200, self.render(), [("Content-Type", CONTENT_TYPE_LATEST)])

    async def watch_scans(self) -> None:
        """Note the end of every scan that worked: the share has no clock of its own."""
        while True:
            await self.share.scanned()
            if self.share.scan_error is None:
                self.last_scan = self._clock()

    async def run(
        self,
        listeners: Sequence[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled (with the daemon's nursery)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.watch_scans)
            await nursery.start(self.http.run, listeners)
            log.info(
                "serving metrics on %s",
                ", ".join(_address(listener) for listener in listeners),
            )
            task_status.started()


def _address(listener: trio.SocketListener) -> str:
    name: Any = listener.socket.getsockname()
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
