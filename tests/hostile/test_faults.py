"""A seeded fault loop: kill -9 the downloader, the source or the registry mid-transfer.

`make test` runs P2PD_FAULT_ROUNDS rounds (default 3); `make soak` runs many more.
P2PD_FAULT_SEED replays a run.  Prints one summary line that the lead quotes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.hostile.attacker import ctl, poll, rpc, sha256_file
from tests.support import VENV_BIN, NotifySocket, free_port, p2pd_config, registryd_env

ROUNDS = int(os.environ.get("P2PD_FAULT_ROUNDS", "3"))
SEED = int(os.environ.get("P2PD_FAULT_SEED", "20261129"))
RATE = 4_000_000  # bytes/s from the source: a transfer takes a second or three


@dataclass
class Daemon:
    """A daemon this test kills and restarts at will; always stopped in the end."""

    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[str] | None = None
    notify: NotifySocket | None = None

    def start(self) -> None:
        self.notify = NotifySocket()
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                self.command,
                env={**self.env, "NOTIFY_SOCKET": self.notify.path},
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                self.notify.wait_for("READY", "1", timeout=0.5)
                return
            except TimeoutError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    tail = self.log()[-3000:]
                    raise AssertionError(f"{self.name} sent no READY=1:\n{tail}") from None

    def kill9(self) -> None:
        assert self.process is not None
        assert self.process.poll() is None, f"{self.name} had already ended:\n{self.log()[-3000:]}"
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._close_notify()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._close_notify()

    def _close_notify(self) -> None:
        if self.notify is not None:
            self.notify.close()
            self.notify = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Peer:
    daemon: Daemon
    share: Path
    downloads: Path
    socket: Path


@dataclass
class Tally:
    probes: int = 0
    faults: dict[str, int] = field(
        default_factory=lambda: {"downloader": 0, "source": 0, "registry": 0}
    )
    mid_transfer: int = 0
    verified: int = 0
    bytes_lost: int = 0


def make_peer(base: Path, name: str, registry_url: str, extra: str) -> Peer:
    config, share, downloads, _, sock = p2pd_config(base, name, [registry_url], free_port(), extra)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("P2PD_", "NOTIFY_"))}
    command = [str(VENV_BIN / "p2pd"), "--config", str(config)]
    return Peer(Daemon(name, command, env, base / f"{name}.log"), share, downloads, sock)


@pytest.fixture
def network(tmp_path: Path) -> Iterator[tuple[Daemon, Peer, Peer]]:
    port = free_port()
    config = tmp_path / "registryd.toml"
    config.write_text("")
    registry = Daemon(
        "registryd",
        [str(VENV_BIN / "registryd"), "--config", str(config)],
        registryd_env(port, {"REGISTRYD_PEER_TTL": "3"}),
        tmp_path / "registryd.log",
    )
    url = f"http://127.0.0.1:{port}"
    source = make_peer(
        tmp_path, "src", url, f"heartbeat_interval = 0.5\nupload_rate_limit = {RATE}\n"
    )
    downloader = make_peer(tmp_path, "dst", url, "heartbeat_interval = 0.5\n")
    daemons = [registry, source.daemon, downloader.daemon]
    try:
        for daemon in daemons:
            daemon.start()
        yield registry, source, downloader
    finally:
        for daemon in daemons:
            daemon.stop()


def call(tally: Tally, peer: Peer, method: str, params: Any = None) -> Any:
    tally.probes += 1
    try:
        answer = rpc(peer.socket, method, params, timeout=15)
    except (OSError, ValueError):
        return None
    return answer.get("result")


def history_of(tally: Tally, peer: Peer, remote_path: str) -> list[dict[str, Any]]:
    entries = call(tally, peer, "history") or []
    return [e for e in entries if e.get("remote_path") == remote_path]


@pytest.mark.timeout(300 + ROUNDS * 180)
def test_fault_loop(network: tuple[Daemon, Peer, Peer], capsys: pytest.CaptureFixture[str]) -> None:
    registry, source, downloader = network
    rng, tally = random.Random(SEED), Tally()
    victims = {"downloader": downloader.daemon, "source": source.daemon, "registry": registry}
    expected: dict[str, str] = {}
    for number in range(ROUNDS):
        name = f"round-{number:03}.bin"
        size = rng.randint(4_000_000, 10_000_000)
        (source.share / name).write_bytes(rng.randbytes(size))
        expected[name] = sha256_file(source.share / name)

        def listed(name: str = name) -> bool:
            files = call(tally, downloader, "ls", {"peer": "src"}) or []
            return any(f.get("path") == name for f in files)

        poll(listed, timeout=90, what=f"dst to list {name} at src", every=0.3)
        # Right after a registry restart, src may not count dst as a member for up
        # to a heartbeat (members re-register one by one): that refusal passes by
        # itself, and must say so.
        attempts: list[str] = []

        def fetch_started(name: str = name, attempts: list[str] = attempts) -> bool:
            result = ctl(downloader.socket, "--json", "fetch", "--detach", "src", name)
            if result.returncode == 0:
                attempts.append(json.loads(result.stdout)["id"])
                return True
            assert "does not count this daemon as a member (yet)" in result.stderr, result.stderr
            return False

        poll(fetch_started, timeout=90, what=f"dst to start fetching {name}", every=0.3)
        transfer_id = attempts[-1]

        # A random point of the transfer: a fraction of its bytes, or its end.
        fraction = rng.uniform(0.02, 0.95)
        victim = rng.choice(sorted(victims))

        def reached(transfer_id: str = transfer_id, goal: float = fraction * size) -> bool:
            transfers = call(tally, downloader, "downloads") or []
            mine = [t for t in transfers if t.get("id") == transfer_id]
            return not mine or mine[0].get("bytes_done", 0) >= goal

        poll(reached, timeout=90, what=f"{name} to reach {fraction:.0%}", every=0.05)
        transfers = call(tally, downloader, "downloads") or []
        if any(t.get("id") == transfer_id for t in transfers):
            tally.mid_transfer += 1
        victims[victim].kill9()
        tally.faults[victim] += 1
        victims[victim].start()

        def finished(name: str = name) -> bool:
            return any(e.get("status") == "ok" for e in history_of(tally, downloader, name))

        try:
            poll(finished, timeout=150, what=f"{name} to be resumed and verified", every=0.5)
        except AssertionError:
            entries = history_of(tally, downloader, name)
            raise AssertionError(
                f"round {number} (seed {SEED}): killed {victim} at {fraction:.0%} of {name}; "
                f"history: {entries}\n{downloader.daemon.log()[-2500:]}"
            ) from None

    try:
        for name, digest in expected.items():
            landed = downloader.downloads / name
            if landed.exists() and sha256_file(landed) == digest:
                tally.verified += 1
            else:
                tally.bytes_lost += (source.share / name).stat().st_size
        visible = {p.name for p in downloader.downloads.iterdir() if not p.name.startswith(".")}
        hidden = [p.name for p in downloader.downloads.iterdir() if p.name.startswith(".")]
        for daemon in (registry, source.daemon, downloader.daemon):
            assert daemon.alive(), f"{daemon.name} ended:\n{daemon.log()[-3000:]}"
        assert call(tally, downloader, "status") is not None
    finally:
        with capsys.disabled():
            print(
                f"\nfault loop: seed={SEED} rounds={ROUNDS} probes tried={tally.probes} "
                f"faults injected={sum(tally.faults.values())} "
                f"({', '.join(f'{k} {v}' for k, v in tally.faults.items())}; "
                f"mid-transfer {tally.mid_transfer}) transfers verified={tally.verified} "
                f"bytes lost={tally.bytes_lost}"
            )
    assert tally.bytes_lost == 0
    assert visible == set(expected), f"unexpected names in download_dir: {visible - set(expected)}"
    assert not [h for h in hidden if h.endswith(".p2pd-partial")], hidden
    for name in expected:
        latest = history_of(tally, downloader, name)
        assert latest and all(e["status"] in ("ok", "failed") for e in latest)
        assert any(e["status"] == "ok" for e in latest), latest
