"""A hostile member against the download side: more bytes than listed, odd framings, huge folders.

The promises (docs/protocol.md §5): a member cannot make p2pd write more than
the listing said, nor hold more of it in memory; every placed byte was
verified, whatever framing the answer used and whatever a resume found.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.hostile.attacker import Attacker, ctl, poll, rpc, sha256_file
from tests.hostile.fake_member import FakeMember, http_response, listing
from tests.hostile.test_hostile_member import (
    FAST,
    GOOD,
    Scene,
    assert_victim_fine,
    entry,
    file_answer,
    join,
    outside_download_dir,
    peer_names,
    range_start,
)
from tests.support import run_p2pd, run_registryd

MIB = 1024 * 1024
#: What a flooding member sends at most in these tests: far more than any listed
#: size, yet bounded, so that a regression fails the test instead of the machine.
FLOOD = 256 * MIB


@pytest.fixture(scope="module")
def scene(module_dir: Path) -> Iterator[Scene]:
    (module_dir / "dave" / "share").mkdir(parents=True)
    (module_dir / "dave" / "share" / "good.bin").write_bytes(GOOD)
    with run_registryd(module_dir, {"REGISTRYD_PEER_TTL": "600"}) as registry:
        urls = [registry.url]
        with (
            run_p2pd(module_dir, "carol", urls, extra_config=FAST) as carol,
            run_p2pd(module_dir, "dave", urls, extra_config=FAST) as dave,
        ):
            poll(lambda: "dave" in peer_names(carol), timeout=30, what="carol to see dave")
            yield Scene(module_dir, registry, carol, dave)


@pytest.fixture
def evil(scene: Scene, tmp_path: Path) -> Iterator[FakeMember]:
    fake = FakeMember(
        Attacker.new(tmp_path), [(scene.carol.state_dir / "identity.crt").read_text()], {}
    )
    before = outside_download_dir(scene)
    with fake:
        yield fake
    assert outside_download_dir(scene) == before, "written outside download_dir"
    assert_victim_fine(scene)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class Watch(threading.Thread):
    """Samples, while a fetch runs, the victim's RSS and the largest file in download_dir."""

    def __init__(self, scene: Scene) -> None:
        super().__init__(daemon=True)
        self.scene = scene
        self.rss_before = rss_mib(scene.carol.process.pid)
        self.max_rss = self.rss_before
        self.max_file = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.01):
            self.max_rss = max(self.max_rss, rss_mib(self.scene.carol.process.pid))
            for path in self.scene.carol.download_dir.rglob("*"):
                with contextlib.suppress(FileNotFoundError):
                    self.max_file = max(self.max_file, path.lstat().st_size)

    def __enter__(self) -> Watch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join()


def data_of(size: int) -> bytes:
    return (os.urandom(4096) * (size // 4096 + 1))[:size]


def chunked(head: bytes, data: bytes) -> Callable[[str], Iterator[bytes]]:
    """An answer whose chunks carry the listed bytes, then FLOOD more, never ending cleanly."""

    def answer(target: str) -> Iterator[bytes]:
        yield head
        yield b"%x\r\n" % len(data) + data + b"\r\n"
        piece = b"\0" * MIB
        for _ in range(FLOOD // MIB):
            yield b"%x\r\n" % len(piece) + piece + b"\r\n"

    return answer


def close_delimited(head: bytes, data: bytes) -> Callable[[str], Iterator[bytes]]:
    def answer(target: str) -> Iterator[bytes]:
        yield head + data
        piece = b"\0" * MIB
        for _ in range(FLOOD // MIB):
            yield piece

    return answer


def head_of(data: bytes, framing: str) -> bytes:
    """An honest file answer's head (status, Repr-Digest), with the framing asked for."""
    head = file_answer(data)
    if framing == "length+chunked":
        return head.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    without_length = head.replace(f"Content-Length: {len(data)}\r\n".encode(), b"")
    if framing == "chunked":
        return without_length.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert framing == "none"
    return without_length


# The three receive paths: in memory (≤ 256 KiB), through h11, by worker threads (≥ 1 MiB).
SIZES = [1000, 600 * 1024, 2 * MIB, 4 * MIB]
FRAMINGS = ["length+chunked", "chunked", "none"]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("framing", FRAMINGS)
def test_a_flood_in_any_framing_is_refused_before_a_byte_is_written(
    scene: Scene, evil: FakeMember, size: int, framing: str
) -> None:
    """The listed bytes, then 256 MiB more, framed so that h11 would read them all."""
    data = data_of(size)
    sha = hashlib.sha256(data).hexdigest()
    name = f"evil-f{framing[:3]}{size}"
    evil.routes["/files"] = listing(entry("flood.bin", sha, size))
    make = close_delimited if framing == "none" else chunked
    evil.routes["/files/flood.bin"] = make(head_of(data, framing), data)
    join(scene, evil, name)
    with Watch(scene) as watch:
        started = time.monotonic()
        fetched = ctl(scene.carol.socket_path, "--json", "fetch", name, "flood.bin", timeout=120)
        elapsed = time.monotonic() - started
    assert fetched.returncode == 1, fetched.stdout
    error = json.loads(fetched.stdout)["error"]
    expected = "Transfer-Encoding" if "chunked" in framing else "no length"
    assert expected in error, error
    # Refused on its head: one attempt, no retry against a member that breaks the protocol.
    assert elapsed < 30, elapsed
    assert watch.max_file <= size, f"a file in download_dir reached {watch.max_file} bytes"
    assert watch.max_rss - watch.rss_before < 64, (watch.rss_before, watch.max_rss)
    assert not (scene.carol.download_dir / "flood.bin").exists()


def test_bytes_after_an_exact_content_length_are_never_written(
    scene: Scene, evil: FakeMember
) -> None:
    """Content-Length is right, and 64 MiB follow the body: the file is exactly the listed one."""
    data = data_of(2 * MIB)
    sha = hashlib.sha256(data).hexdigest()
    evil.routes["/files"] = listing(entry("tail.bin", sha, len(data)))

    def answer(target: str) -> Iterator[bytes]:
        yield file_answer(data) + data
        for _ in range(64):
            yield b"\0" * MIB

    evil.routes["/files/tail.bin"] = answer
    join(scene, evil, "evil-tail")
    with Watch(scene) as watch:
        fetched = ctl(
            scene.carol.socket_path, "--json", "fetch", "evil-tail", "tail.bin", timeout=120
        )
    assert fetched.returncode == 0, fetched.stdout
    placed = Path(json.loads(fetched.stdout)["path"])
    assert placed.stat().st_size == len(data) and sha256_file(placed) == sha
    assert watch.max_file <= len(data)
    placed.unlink()


def test_a_partial_file_longer_than_the_listing_is_cut_before_the_resume(
    scene: Scene, evil: FakeMember
) -> None:
    """Left by a flood that older versions let through: the right 2 MiB, then 20 MiB of junk.

    Resuming from it must place exactly the listed, verified bytes, never the junk.
    """
    data = data_of(2 * MIB)
    sha = hashlib.sha256(data).hexdigest()
    partial = scene.carol.download_dir / f".{sha}.p2pd-partial"
    partial.write_bytes(data + b"\xee" * (20 * MIB))
    evil.routes["/files"] = listing(entry("long.bin", sha, len(data)))
    evil.routes["/files/long.bin"] = lambda target: (
        file_answer(data, range_start(evil.heads[-1])) + data[range_start(evil.heads[-1]) :]
    )
    join(scene, evil, "evil-long")
    fetched = ctl(scene.carol.socket_path, "--json", "fetch", "evil-long", "long.bin", timeout=120)
    assert fetched.returncode == 0, fetched.stdout
    outcome = json.loads(fetched.stdout)
    placed = Path(outcome["path"])
    assert placed.stat().st_size == len(data), placed.stat().st_size
    assert sha256_file(placed) == sha
    assert not partial.exists()
    placed.unlink()


def test_a_listing_sent_chunked_is_capped_like_any_other(scene: Scene, evil: FakeMember) -> None:
    """A listing that never ends, chunked: refused at 64 MiB, the memory held bounded."""

    def answer(target: str) -> Iterator[bytes]:
        yield b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: "1"\r\n\r\n'
        yield b'5\r\n{"a":\r\n'
        piece = b" " * MIB
        for _ in range(FLOOD // MIB):
            yield b"%x\r\n" % len(piece) + piece + b"\r\n"

    evil.routes["/files"] = answer
    join(scene, evil, "evil-biglist")
    with Watch(scene) as watch:
        result = ctl(scene.carol.socket_path, "ls", "evil-biglist", timeout=120)
    assert result.returncode == 1
    assert "sent more than 67108864 bytes" in result.stderr, result.stderr
    assert watch.max_rss - watch.rss_before < 160, (watch.rss_before, watch.max_rss)


def test_a_folder_of_100_000_files_is_refused_at_once(scene: Scene, evil: FakeMember) -> None:
    """A listing may hold a million entries: a folder fetch queues a bounded number of
    transfers (it took 68 s and 720 MiB to queue these 100 000 before)."""
    files = [entry(f"many/{n // 1000:03d}/f{n:06d}.bin", HEXES[n % 16], 4) for n in range(100_000)]
    evil.routes["/files"] = listing(*files)
    evil.routes["/files/*"] = http_response(503, b'{"error":"busy"}', reason="Busy")
    join(scene, evil, "evil-many")
    carol = scene.carol
    rss_before = rss_mib(carol.process.pid)
    started = time.monotonic()
    fetched = ctl(
        carol.socket_path, "--json", "fetch", "--detach", "evil-many", "many/", timeout=120
    )
    elapsed = time.monotonic() - started
    assert fetched.returncode == 1, fetched.stdout[:300]
    [outcome] = json.loads(fetched.stdout)  # a folder's outcome: a list
    error = outcome["error"]
    assert "'many/' holds 100000 files" in error and "many/000/ (1000 files)" in error, error
    assert elapsed < 20, elapsed
    # The listing itself is held (parsed, and kept for revalidation); no transfer is.
    assert rss_mib(carol.process.pid) - rss_before < 256
    assert rpc(carol.socket_path, "downloads")["result"] == []
    newest = rpc(carol.socket_path, "history")["result"][0]
    assert (newest["status"], newest["error"]) == ("failed", error)


HEXES = [hashlib.sha256(bytes([n])).hexdigest() for n in range(16)]
