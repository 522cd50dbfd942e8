"""p2pd's Prometheus metrics: the key, the collector, and a real p2pd scraped over HTTP."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from p2pcommon.lifecycle import ConfigError
from p2pcommon.settings import load_settings
from p2pd.config import PeerSettings
from p2pd.metrics import PeerMetrics
from tests.promlint import lint
from tests.support import (
    VENV_BIN,
    RunningPeer,
    free_port,
    p2pd_config,
    run_p2pd,
    run_registryd,
)

FAST = "heartbeat_interval = 0.5\n"


# -- the key ----------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("P2PD_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def settings_from(tmp_path: Path, extra: str = "") -> PeerSettings:
    (tmp_path / "share").mkdir(exist_ok=True)
    path = tmp_path / "p2pd.toml"
    path.write_text(
        f'share_dir = "{tmp_path / "share"}"\n'
        f'download_dir = "{tmp_path / "downloads"}"\n'
        'registries = ["http://127.0.0.1:7000"]\n'
        'secret = "a-good-long-secret"\n' + extra
    )
    settings, _ = load_settings(PeerSettings, explicit_path=str(path), default_path="/x")
    return settings


@pytest.mark.usefixtures("clean_env")
def test_metrics_are_off_unless_the_key_names_an_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert settings_from(tmp_path).metrics_listen == ""
    assert settings_from(tmp_path, 'metrics_listen = ""\n').metrics_listen == ""
    on = settings_from(tmp_path, 'metrics_listen = "127.0.0.1:9101"\n')
    assert on.metrics_listen == "127.0.0.1:9101"
    monkeypatch.setenv("P2PD_METRICS_LISTEN", "[::1]:9102")
    assert settings_from(tmp_path).metrics_listen == "[::1]:9102"


@pytest.mark.usefixtures("clean_env")
def test_a_bad_metrics_address_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="metrics_listen"):
        settings_from(tmp_path, 'metrics_listen = "no port here"\n')


# -- the collector, from the daemon's state -----------------------------------------


@dataclass
class FakeEntry:
    size: int


@dataclass
class FakeIndex:
    entries: list[FakeEntry]

    def __len__(self) -> int:
        return len(self.entries)

    def listing(self) -> list[FakeEntry]:
        return self.entries


@dataclass
class FakeShare:
    index: FakeIndex
    indexing: bool = False
    scan_error: str | None = None


@dataclass
class FakeStats:
    active: int = 1
    served_bytes: int = 1234
    served_files: int = 3
    refused_busy: int = 2
    listings_served: int = 7
    refused: Counter[str] = field(
        default_factory=lambda: Counter({"handshake": 4, "not a member": 5})
    )


@dataclass
class FakeSearch:
    searches: int = 6


@dataclass
class FakeServer:
    stats: FakeStats
    upload_slots: int = 8
    search: FakeSearch = field(default_factory=FakeSearch)


@dataclass
class FakeDownloads:
    active: dict[str, object] = field(default_factory=lambda: {"t1": object()})
    received_bytes: int = 999
    outcomes: Counter[str] = field(default_factory=lambda: Counter({"ok": 2, "failed": 1}))


class FakeMembers:
    #: The registry's count at the last heartbeat, ourselves not included.
    peers = 2


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def collected(server: FakeServer, downloads: FakeDownloads) -> dict[Any, float]:
    share = FakeShare(FakeIndex([FakeEntry(10), FakeEntry(32)]))
    metrics = PeerMetrics(
        cast(Any, server),
        cast(Any, downloads),
        cast(Any, share),
        cast(Any, FakeMembers()),
        lambda: True,
        failures=Counter({"connection": 3}),
    )
    metrics.last_scan = 1_800_000_000.0
    return samples(metrics.render().decode())


def test_the_collector_reads_the_live_state() -> None:
    got = collected(FakeServer(FakeStats()), FakeDownloads())
    assert got[("p2pd_uploaded_bytes_total", ())] == 1234
    assert got[("p2pd_uploaded_files_total", ())] == 3
    assert got[("p2pd_uploads_active", ())] == 1
    assert got[("p2pd_upload_slots", ())] == 8
    assert got[("p2pd_downloads_active", ())] == 1
    assert got[("p2pd_shared_files", ())] == 2
    assert got[("p2pd_shared_bytes", ())] == 42
    assert got[("p2pd_share_indexing", ())] == 0
    assert got[("p2pd_share_last_scan_timestamp_seconds", ())] == 1_800_000_000.0
    assert got[("p2pd_members", ())] == 2
    assert got[("p2pd_registered", ())] == 1
    assert got[("p2pd_contained_failures_total", (("kind", "connection"),))] == 3
    assert got[("p2pd_listing_requests_total", ())] == 7
    assert got[("p2pd_search_requests_total", ())] == 6
    assert got[("p2pd_refused_total", (("reason", "busy"),))] == 2
    assert got[("p2pd_refused_total", (("reason", "handshake"),))] == 4
    assert got[("p2pd_refused_total", (("reason", "not a member"),))] == 5
    assert got[("p2pd_downloaded_bytes_total", ())] == 999
    assert got[("p2pd_transfers_total", (("outcome", "ok"),))] == 2
    assert got[("p2pd_transfers_total", (("outcome", "failed"),))] == 1
    assert got[("p2pd_transfers_total", (("outcome", "cancelled"),))] == 0


# -- a real p2pd ------------------------------------------------------------------


@dataclass
class Scraped:
    peer: RunningPeer
    url: str


@pytest.fixture
def two_peers(tmp_path: Path) -> Iterator[tuple[Scraped, RunningPeer]]:
    """bob (metrics on) shares two files; alice (metrics off) downloads from him."""
    with run_registryd(tmp_path, {"REGISTRYD_PEER_TTL": "3"}) as registry:
        bob_share = tmp_path / "bob" / "share"
        bob_share.mkdir(parents=True)
        (bob_share / "a.bin").write_bytes(os.urandom(200_000))
        (bob_share / "b.txt").write_bytes(b"hello\n")
        port = free_port()
        metrics = f'metrics_listen = "127.0.0.1:{port}"\n'
        with (
            run_p2pd(tmp_path, "bob", [registry.url], extra_config=FAST + metrics) as bob,
            run_p2pd(tmp_path, "alice", [registry.url], extra_config=FAST) as alice,
        ):
            yield Scraped(bob, f"http://127.0.0.1:{port}/metrics"), alice


def scrape(url: str) -> dict[Any, float]:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


def wait_for(check: Any, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_real_p2pd_serves_its_metrics(two_peers: tuple[Scraped, RunningPeer]) -> None:
    bob, alice = two_peers
    size = (bob.peer.share_dir / "a.bin").stat().st_size
    got = scrape(bob.url)
    assert got[("p2pd_shared_files", ())] == 2
    assert got[("p2pd_shared_bytes", ())] == size + 6
    assert abs(got[("p2pd_share_last_scan_timestamp_seconds", ())] - time.time()) < 60
    assert got[("p2pd_uploaded_bytes_total", ())] == 0
    assert got[("p2pd_uploads_active", ())] == 0
    assert got[("p2pd_downloads_active", ())] == 0
    assert ("p2pd_refused_total", (("reason", "busy"),)) in got

    wait_for(lambda: scrape(bob.url)[("p2pd_registered", ())] == 1, "bob to register")
    wait_for(lambda: "bob" in [p["name"] for p in alice.ctl_json("peers")], "alice to see bob")
    wait_for(lambda: scrape(bob.url)[("p2pd_members", ())] == 1, "bob to see alice")
    outcome = alice.ctl_json("fetch", "bob", "a.bin")
    assert outcome["status"] == "ok", outcome
    assert (
        outcome["sha256"] == hashlib.sha256((bob.peer.share_dir / "a.bin").read_bytes()).hexdigest()
    )
    # The upload's last bytes are counted when its body ends, a moment after alice has them.
    wait_for(lambda: scrape(bob.url)[("p2pd_uploaded_files_total", ())] == 1, "the upload to count")
    got = scrape(bob.url)
    assert got[("p2pd_uploaded_bytes_total", ())] == size
    assert got[("p2pd_uploads_active", ())] == 0

    # HEAD works on the same route; everything else is not there.
    head = httpx.head(bob.url, timeout=10)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) > 0
    assert httpx.get(bob.url.replace("/metrics", "/files"), timeout=10).status_code == 404
    assert httpx.post(bob.url, timeout=10).status_code == 405
    assert "serving metrics on 127.0.0.1:" in bob.peer.log()


def test_a_real_p2pd_s_metrics_pass_promtool_s_lint_rules(
    two_peers: tuple[Scraped, RunningPeer],
) -> None:
    text = httpx.get(two_peers[0].url, timeout=10).text
    assert "p2pd_uploaded_bytes_total" in text
    assert lint(text) == []


def test_the_lint_flags_what_promtool_flags() -> None:
    bad = (
        "# TYPE p2pd_requests counter\np2pd_requests 1\n"
        "# HELP p2pd_open_total Open.\n# TYPE p2pd_open_total gauge\np2pd_open_total 1\n"
        "# HELP p2pd_latency_milliseconds L.\n# TYPE p2pd_latency_milliseconds gauge\n"
        "p2pd_latency_milliseconds 1\n"
        "# HELP p2pd_size_kb S.\n# TYPE p2pd_size_kb gauge\np2pd_size_kb 1\n"
        "# HELP p2pd_members_gauge M.\n# TYPE p2pd_members_gauge gauge\np2pd_members_gauge 1\n"
        '# HELP p2pd_peerCount P.\n# TYPE p2pd_peerCount gauge\np2pd_peerCount{peerName="a"} 1\n'
    )
    assert lint(bad) == [
        "p2pd_requests: counter metrics should have '_total' suffix",
        "p2pd_open_total: non-counter metrics should not have '_total' suffix",
        "p2pd_requests: no help text",
        "p2pd_latency_milliseconds: use base unit 'seconds' instead of 'milliseconds'",
        "p2pd_size_kb: metric names should not contain abbreviated units ('kb')",
        "p2pd_members_gauge: metric name should not include type 'gauge'",
        "p2pd_peerCount: metric names should be written in 'snake_case' not 'camelCase'",
        "p2pd_peerCount: label names should be written in 'snake_case': 'peerName'",
    ]
    collector = PeerMetrics(
        cast(Any, FakeServer(FakeStats())),
        cast(Any, FakeDownloads()),
        cast(Any, FakeShare(FakeIndex([FakeEntry(10)]))),
        cast(Any, FakeMembers()),
        lambda: True,
        failures=Counter({"connection": 3}),
    )
    assert lint(collector.render().decode()) == []


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian: apt-get install prometheus, ~100 MB); "
    "test_a_real_p2pd_s_metrics_pass_promtool_s_lint_rules applies its rules without it",
)
def test_promtool_finds_nothing_to_lint(two_peers: tuple[Scraped, RunningPeer]) -> None:
    assert PROMTOOL is not None
    text = httpx.get(two_peers[0].url, timeout=10).text
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == "", result.stdout + result.stderr


def test_a_metrics_address_in_use_stops_the_start_naming_the_key(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config, _, _, _, socket_path = p2pd_config(
            tmp_path,
            "carol",
            ["http://127.0.0.1:9"],
            free_port(),
            f'metrics_listen = "127.0.0.1:{port}"\n',
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("P2PD_", "NOTIFY_"))}
        try:
            result = subprocess.run(
                [str(VENV_BIN / "p2pd"), "--config", str(config)],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            shutil.rmtree(socket_path.parent, ignore_errors=True)
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port} (key 'metrics_listen')" in result.stderr
