"""Big answers and big listings: bounded in memory, and never a stalled daemon.

A local client asks for a batch of 100 `shared` listings of a large share in
one line; members send listings of hundreds of thousands of entries.  The
daemon's answers and the listings it keeps must stay within their budgets,
and its control socket must keep answering others within a second meanwhile
(a loop stalled for 30 s is a daemon the systemd watchdog kills).
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hostile.attacker import Attacker, ctl, poll, register, rpc
from tests.hostile.fake_member import FakeMember, listing
from tests.support import RunningPeer, RunningRegistry, run_p2pd, run_registryd

FAST = "heartbeat_interval = 0.5\n"
SHARED_FILES = 20_000
MiB = 1024 * 1024
#: The control socket's bound on one answer line (docs/protocol.md §6).
MAX_ANSWER = 64 * MiB


@dataclass
class Scene:
    registry: RunningRegistry
    victim: RunningPeer


@pytest.fixture(scope="module")
def scene(module_dir: Path) -> Iterator[Scene]:
    share = module_dir / "victim" / "share"
    for folder in range(SHARED_FILES // 1000):
        (share / f"folder-{folder:02d}").mkdir(parents=True)
    for i in range(SHARED_FILES):
        (share / f"folder-{i // 1000:02d}" / f"a-rather-long-file-name-{i:06d}.txt").write_text(
            str(i)
        )
    with (
        run_registryd(module_dir, {"REGISTRYD_PEER_TTL": "600"}) as registry,
        run_p2pd(module_dir, "victim", [registry.url], extra_config=FAST) as victim,
    ):

        def indexed() -> bool:
            answer = rpc(victim.socket_path, "status", timeout=30)
            return bool(answer["result"]["shared_files"] == SHARED_FILES)

        poll(indexed, timeout=120, what="the share to be indexed", every=0.5)
        yield Scene(registry, victim)


class Latency:
    """`status` asked again and again on its own connection while something else runs."""

    def __init__(self, socket_path: Path) -> None:
        self._path = socket_path
        self._stop = threading.Event()
        self.worst = 0.0
        self.asked = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            answer = rpc(self._path, "status", timeout=60)
            assert "result" in answer, answer
            self.worst = max(self.worst, time.monotonic() - started)
            self.asked += 1
            time.sleep(0.02)

    def __enter__(self) -> Latency:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=90)


def one_line(path: Path, line: bytes, timeout: float = 120) -> bytes:
    """Send ``line``; read back one whole answer line."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(line + b"\n")
        received = bytearray()
        while not received.endswith(b"\n"):
            chunk = sock.recv(1 << 20)
            assert chunk, f"closed after {len(received)} bytes"
            received += chunk
    return bytes(received)


def test_a_batch_of_shared_calls_is_bounded_and_the_loop_stays_free(scene: Scene) -> None:
    path = scene.victim.socket_path
    single = json.loads(one_line(path, b'{"jsonrpc":"2.0","id":0,"method":"shared"}'))
    assert len(single["result"]) == SHARED_FILES
    each = len(json.dumps(single["result"], separators=(",", ":")))
    assert 100 * each > 2 * MAX_ANSWER  # unbounded, the answer would be over 128 MiB
    batch = [{"jsonrpc": "2.0", "id": i, "method": "shared"} for i in range(100)]
    with Latency(path) as latency:
        time.sleep(0.2)  # the status client is at work first
        started = time.monotonic()
        line = one_line(path, json.dumps(batch).encode())
        took = time.monotonic() - started
    assert len(line) <= MAX_ANSWER + 1
    answers = {answer["id"]: answer for answer in json.loads(line)}
    assert sorted(answers) == list(range(100))
    full = [i for i, answer in answers.items() if "result" in answer]
    assert full and full == list(range(len(full)))  # the first ones, while the budget lasts
    for i in full:
        assert answers[i]["result"] == single["result"]
    for i in set(answers) - set(full):
        error = answers[i]["error"]
        assert error["code"] == -32603 and error["message"].startswith("answer too large")
    assert latency.asked > 0 and latency.worst < 1.0, (latency.worst, took)
    # The daemon went on as ever.
    assert ctl(path, "--json", "status").returncode == 0


def big_listing(count: int, seed: str) -> bytes:
    """A valid listing of ``count`` entries, as a member with a large share sends it."""
    files = [
        {
            "path": f"{seed}/folder-{i // 1000:04d}/file-{i:07d}.bin",
            "size": i,
            "mtime": 1_700_000_000.5,
            "sha256": hashlib.sha256(f"{seed}{i}".encode()).hexdigest(),
        }
        for i in range(count)
    ]
    return listing(*files)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def join(scene: Scene, fake: FakeMember, name: str) -> None:
    assert register(scene.registry.url, fake.who, name, fake.port).status == 200

    def known() -> bool:
        answer = rpc(scene.victim.socket_path, "peers", timeout=30)
        return name in [peer["name"] for peer in answer["result"]]

    poll(known, timeout=30, what=f"the victim to see {name}", every=0.3)


def test_listings_kept_of_large_shares_cost_their_size_within_a_budget(
    scene: Scene, tmp_path: Path
) -> None:
    victim = scene.victim
    trusted = [(victim.state_dir / "identity.crt").read_text()]
    count = 200_000  # ~30 MiB of JSON each: as pydantic objects, ~150 MiB each
    members: list[FakeMember] = []
    try:
        for n in range(3):
            body = big_listing(count, f"m{n}")
            fake = FakeMember(Attacker.new(tmp_path / f"m{n}"), trusted, {"/files": body})
            members.append(fake.__enter__())
            join(scene, fake, f"large-{n}")
        before = rss_bytes(victim.process.pid)
        took: list[float] = []
        with Latency(victim.socket_path) as latency:
            time.sleep(0.2)
            for n in range(3):
                started = time.monotonic()
                # A fetch of what the member does not share: its listing is fetched,
                # checked and kept; the answer is one short error.
                answer = rpc(
                    victim.socket_path,
                    "fetch",
                    {"peer": f"large-{n}", "path": "not/there"},
                    timeout=120,
                )
                took.append(time.monotonic() - started)
                assert "does not share" in answer["error"]["message"], answer
        grown = rss_bytes(victim.process.pid) - before
        assert latency.asked > 0 and latency.worst < 1.0, (latency.worst, took)
        # Three listings of ~30 MiB: kept within the 64 MiB budget, compactly.
        assert grown < 100 * MiB, f"RSS grew by {grown / MiB:.0f} MiB"
        # The kept ones answer `ls` (the last one fetched is kept), and look-ups work.
        listed = rpc(victim.socket_path, "ls", {"peer": "large-2"}, timeout=120)
        assert len(listed["result"]) == count
        assert listed["result"][12345]["path"] == "m2/folder-0012/file-0012345.bin"
    finally:
        for fake in members:
            fake.__exit__(None, None, None)
