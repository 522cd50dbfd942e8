"""Issue 22 against the registry's lookups: an attacker holding the network secret.

Requests are signed by hand (tests/hostile/attacker.py) and sent on raw sockets:

- lookups of unknown and malformed ids, resolutions of texts that are no
  PEER, pages asking for more than the maximum: 404, 400, clamped;
- a member that registers and drops self-signed identities fast (1 000 a
  minute over a few addresses): the registry stays fast for the others,
  measured on a member's heartbeats meanwhile;
- a flood of lookups from one address on many kept-alive connections:
  429 past its budget, while another member's heartbeats and lookups are
  answered as fast as before.
"""

from __future__ import annotations

import contextlib
import secrets
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.hostile.attacker import (
    Attacker,
    Closed,
    RawResponse,
    build_request,
    http,
    joined,
    read_response,
    register,
    registry_port,
    sign,
    signed,
    tcp,
)
from tests.support import RunningRegistry, run_registryd


@pytest.fixture(scope="module")
def registry(module_dir: Path) -> Iterator[RunningRegistry]:
    with run_registryd(module_dir) as running:
        yield running


def refused(answer: RawResponse, status: int, error: str) -> None:
    assert (answer.status, answer.json()["error"]) == (status, error), answer


# -- what is no member, no PEER, no page -------------------------------------------------


def test_unknown_and_malformed_ids(registry: RunningRegistry, tmp_path: Path) -> None:
    url = registry.url
    who = Attacker.new(tmp_path)
    joined(url, who, "who", 9)
    assert signed(url, "GET", f"/members/{who.id}").json()["cert"] == who.cert_pem
    refused(signed(url, "GET", f"/members/{'q' * 52}"), 404, "unknown member")
    for bad in (
        who.id.upper(),
        who.id[:51],
        who.id + "a",
        who.id[:51] + "1",
        "%61" * 52,
        "../clients",
        who.id + "/..",
        "a" * 10_000,
        "",
    ):
        refused(signed(url, "GET", f"/members/{bad}"), 400, "bad request")
    # The id is in the signed path: another id under the same signature is refused.
    headers = sign("GET", f"/members/{who.id}", b"")
    raw = build_request("GET", f"/members/{'q' * 52}", headers)
    assert http(registry_port(url), raw).status == 401


def test_texts_that_are_no_peer(registry: RunningRegistry) -> None:
    url = registry.url
    for text in ("%00", "a%0ab", "%7f", "%ff%fe", "x" * 65, "%e2%80%8b" * 65, "%c3"):
        refused(signed(url, "GET", f"/resolve/{text}"), 400, "bad request")
    # Raw bytes that are no URL: the HTTP layer refuses them before any signature.
    port = registry_port(url)
    raw = build_request("GET", "/resolve/x", sign("GET", "/resolve/x", b"")).replace(
        b"/resolve/x", b"/resolve/\xff\x00"
    )
    with contextlib.suppress(Closed):
        assert http(port, raw).status == 400
    answer = signed(url, "GET", "/resolve/nobody-here")
    assert answer.json() == {"query": "nobody-here", "members": [], "more": False}


def test_a_page_limit_above_the_maximum_is_clamped(registry: RunningRegistry) -> None:
    url = registry.url
    for asked in ("1001", "1000000", "9" * 8000):
        page = signed(url, "GET", "/members", query=f"?limit={asked}&certs=0")
        assert page.status == 200, page
        assert page.json()["limit"] == 1000
    for bad in ("limit=1e9", "limit=0x10", "certs=2", "after=..", "after=%00"):
        refused(signed(url, "GET", "/members", query=f"?{bad}"), 400, "bad request")


# -- the registry stays fast for the others ----------------------------------------------


class Heartbeats:
    """A member that heartbeats every ``every`` s and keeps each answer's latency."""

    def __init__(self, url: str, member: Attacker, lease: str, every: float = 0.05) -> None:
        self._url, self._member, self._lease, self._every = url, member, lease, every
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()

    def run(self) -> None:
        body = {"id": self._member.id, "lease": self._lease}
        while not self._stop.wait(self._every):
            started = time.monotonic()
            answer = signed(self._url, "POST", "/heartbeat", body, source="127.0.0.90")
            self.latencies.append(time.monotonic() - started)
            if answer.status != 200:
                self.failures.append(f"{answer.status} {answer.body[:100]!r}")

    def stop(self) -> None:
        self._stop.set()

    def p90_ms(self) -> float:
        return 1000 * statistics.quantiles(self.latencies, n=10)[-1]


def measured(
    url: str, tmp_path: Path, load: Callable[[], None], seconds: float
) -> tuple[Heartbeats, Heartbeats]:
    """A member's heartbeats alone for ``seconds``, then with ``load`` running beside."""
    member = Attacker.new(tmp_path / "member")
    lease = joined(url, member, "bystander", 7070)
    quiet = Heartbeats(url, member, lease)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(quiet.run)
        time.sleep(seconds)
        quiet.stop()
        running.result()
    busy = Heartbeats(url, member, lease)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(busy.run)
        loaded = pool.submit(load)
        loaded.result()
        busy.stop()
        running.result()
    return quiet, busy


def test_identities_registered_and_dropped_fast_slow_nobody(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    """1 000 self-signed identities a minute, each registered (proven by its key) and
    dropped with its lease, spread over 20 addresses, as the issue's hostile member."""
    url = registry.url
    seconds = 12.0
    rate = 1000 / 60
    identities = [Attacker.new(tmp_path / f"churn{i}") for i in range(int(seconds * rate) + 5)]
    done: list[float] = []

    def churn() -> None:
        started = time.monotonic()
        for number, who in enumerate(identities):
            due = started + number / rate
            time.sleep(max(0.0, due - time.monotonic()))
            if time.monotonic() - started > seconds:
                return
            source = f"127.0.1.{number % 20 + 1}"
            answer = register(url, who, f"churn-{number}", 9, source=source)
            assert answer.status == 200, answer
            leave = {"id": who.id, "lease": answer.json()["lease"]}
            assert signed(url, "POST", "/leave", leave, source=source).status == 200
            done.append(time.monotonic())

    quiet, busy = measured(url, tmp_path, churn, seconds)
    achieved = len(done) / (done[-1] - done[0]) * 60 if len(done) > 1 else 0.0
    assert achieved > 800, f"the churn reached {achieved:.0f} identities a minute only"
    assert quiet.failures == busy.failures == []
    print(
        f"heartbeat p90: {quiet.p90_ms():.1f} ms alone, {busy.p90_ms():.1f} ms beside "
        f"{achieved:.0f} identities a minute"
    )
    # Generous for a busy machine: the churn costs the registry ~1 ms of CPU per identity.
    assert busy.p90_ms() < max(50.0, 3 * quiet.p90_ms()), (quiet.p90_ms(), busy.p90_ms())
    assert registry.process.poll() is None


def flood(
    port: int, source: str, stop: threading.Event, counts: dict[int, int], lock: threading.Lock
) -> None:
    """Lookups without pause on one kept-alive connection, each signed anew."""
    while not stop.is_set():
        try:
            with tcp(port, source=source, timeout=5) as sock:
                while not stop.is_set():
                    member_id = secrets.token_hex(26)[:52].translate(str.maketrans("0189", "2345"))
                    path = f"/members/{member_id}"
                    sock.sendall(build_request("GET", path, sign("GET", path, b"")))
                    answer = read_response(sock)
                    with lock:
                        counts[answer.status] = counts.get(answer.status, 0) + 1
                    if answer.headers.get("connection") == "close":
                        break
        except (TimeoutError, Closed, OSError):
            continue


def test_a_lookup_flood_from_one_address_slows_nobody_else(
    tmp_path: Path,
) -> None:
    # A registry of its own: the flood's 429s must not spill into the other tests.
    with run_registryd(tmp_path) as registry:
        url, port = registry.url, registry_port(registry.url)
        counts: dict[int, int] = {}
        stop, lock = threading.Event(), threading.Lock()
        seconds = 6.0

        def load() -> None:
            with ThreadPoolExecutor(16) as pool:
                for _ in range(16):
                    pool.submit(flood, port, "127.0.2.1", stop, counts, lock)
                time.sleep(seconds)
                stop.set()

        quiet, busy = measured(url, tmp_path, load, seconds)
        print(
            f"flood answers {counts}; heartbeat p90: {quiet.p90_ms():.1f} ms alone, "
            f"{busy.p90_ms():.1f} ms beside the flood"
        )
        assert counts.get(429, 0) > counts.get(404, 0) > 0  # its budget, then refused
        assert set(counts) <= {404, 429}
        assert quiet.failures == busy.failures == []
        assert busy.p90_ms() < max(50.0, 3 * quiet.p90_ms()), (quiet.p90_ms(), busy.p90_ms())
        # Another address looks up as it likes.
        for _ in range(20):
            assert signed(url, "GET", f"/members/{'q' * 52}", source="127.0.2.2").status == 404
        metrics = http(port, build_request("GET", "/metrics", {})).body.decode()
        assert "registry_lookups_limited_total" in metrics
        assert registry.process.poll() is None
