"""A hostile member: a fake peer, registered under its own certificate, lies to a real p2pd."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hostile.attacker import (
    Attacker,
    assert_serving,
    ctl,
    files_under,
    poll,
    register,
    sha256_file,
)
from tests.hostile.fake_member import HANG, RESET, FakeMember, http_response, listing
from tests.support import VENV_BIN, RunningPeer, RunningRegistry, run_p2pd, run_registryd

FAST = "heartbeat_interval = 0.5\n"
GOOD = b"a good file from a good member\n" * 1000
HEX = hashlib.sha256(b"evil").hexdigest()


@dataclass
class Scene:
    base: Path
    registry: RunningRegistry
    carol: RunningPeer  # the victim
    dave: RunningPeer  # a good member


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
            poll(
                lambda: "dave" in peer_names(carol), timeout=30, what="carol to see dave", every=0.3
            )
            yield Scene(module_dir, registry, carol, dave)


def peer_names(peer: RunningPeer) -> list[str]:
    result = ctl(peer.socket_path, "--json", "peers", timeout=30)
    return [p["name"] for p in json.loads(result.stdout)] if result.returncode == 0 else []


def outside_download_dir(scene: Scene) -> set[Path]:
    carol, dave = scene.carol, scene.dave
    return files_under(scene.base, (carol.download_dir, carol.state_dir, dave.state_dir))


@pytest.fixture
def evil(scene: Scene, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FakeMember]:
    """An unstarted fake member named after the test; the test fills in its routes."""
    who = Attacker.new(tmp_path)
    trusted = [(scene.carol.state_dir / "identity.crt").read_text()]
    fake = FakeMember(who, trusted, {})
    before = outside_download_dir(scene)
    with fake:
        yield fake
    after = outside_download_dir(scene)
    assert after == before, f"written outside download_dir: {sorted(map(str, after - before))}"
    assert_victim_fine(scene)


def join(scene: Scene, fake: FakeMember, name: str) -> None:
    assert register(scene.registry.url, fake.who, name, fake.port).status == 200
    poll(
        lambda: name in peer_names(scene.carol), timeout=30, what=f"carol to see {name}", every=0.3
    )


def assert_victim_fine(scene: Scene) -> None:
    """carol runs, answers status, and still fetches a good file from dave, intact."""
    carol = scene.carol
    assert_serving(carol.process, carol.socket_path, carol.log())
    fetched = ctl(carol.socket_path, "--json", "fetch", "dave", "good.bin", timeout=90)
    assert fetched.returncode == 0, fetched.stderr
    outcome = json.loads(fetched.stdout)
    outcome = outcome[0] if isinstance(outcome, list) else outcome
    assert outcome["status"] == "ok", outcome
    landed = Path(outcome["path"])
    assert landed.parent == carol.download_dir
    assert sha256_file(landed) == hashlib.sha256(GOOD).hexdigest()
    landed.unlink()  # so that the next check transfers again


def assert_invalid_listing(scene: Scene, name: str) -> None:
    result = ctl(scene.carol.socket_path, "ls", name, timeout=60)
    assert result.returncode == 1, (result.returncode, result.stdout[:300], result.stderr[:300])
    assert f"{name} sent an invalid listing" in result.stderr, result.stderr[:500]


def entry(path: str, sha256: str = HEX, size: int = 4) -> dict[str, object]:
    return {"path": path, "size": size, "mtime": 0, "sha256": sha256}


def test_sha256_not_hex(scene: Scene, evil: FakeMember) -> None:
    evil.routes["/files"] = listing(entry("a.txt", "z" * 64))
    evil.routes["/files/*"] = http_response(200, b"evil")
    join(scene, evil, "evil-nothex")
    assert_invalid_listing(scene, "evil-nothex")
    assert ctl(scene.carol.socket_path, "fetch", "evil-nothex", "a.txt").returncode == 1


def test_sha256_that_is_a_path(scene: Scene, evil: FakeMember) -> None:
    evil.routes["/files"] = listing(entry("a.txt", "../../x"))
    evil.routes["/files/*"] = http_response(200, b"evil")
    join(scene, evil, "evil-shapath")
    assert_invalid_listing(scene, "evil-shapath")
    assert ctl(scene.carol.socket_path, "fetch", "evil-shapath", "a.txt").returncode == 1


def test_listing_nested_5000_deep(scene: Scene, evil: FakeMember) -> None:
    evil.routes["/files"] = http_response(200, b"[" * 5000, {"Content-Type": "application/json"})
    join(scene, evil, "evil-deep")
    assert_invalid_listing(scene, "evil-deep")


def test_listing_of_10_mb_of_brackets(scene: Scene, evil: FakeMember) -> None:
    evil.routes["/files"] = http_response(
        200, b"[" * 10_000_000, {"Content-Type": "application/json"}
    )
    join(scene, evil, "evil-huge")
    assert_invalid_listing(scene, "evil-huge")


def test_a_path_with_a_lone_surrogate(scene: Scene, evil: FakeMember) -> None:
    body = b'{"generation":1,"files":[{"path":"\\ud800","size":4,"mtime":0,"sha256":"%s"}]}'
    evil.routes["/files"] = http_response(200, body % HEX.encode(), {"ETag": '"1"'})
    evil.routes["/files/*"] = http_response(200, b"evil")
    join(scene, evil, "evil-surrogate")
    assert_invalid_listing(scene, "evil-surrogate")


@pytest.mark.parametrize("path", ["../../escape.txt", "a/../../escape.txt", "/tmp/escape.txt"])
def test_a_path_that_climbs_out(scene: Scene, evil: FakeMember, path: str) -> None:
    name = f"evil-climb{len(path)}"
    evil.routes["/files"] = listing(entry(path, hashlib.sha256(b"evil").hexdigest()))
    evil.routes["/files/*"] = http_response(200, b"evil")
    absolute_existed = Path("/tmp/escape.txt").exists()
    join(scene, evil, name)
    assert_invalid_listing(scene, name)
    fetched = ctl(scene.carol.socket_path, "fetch", name, path)
    assert fetched.returncode == 1, fetched.stdout
    assert absolute_existed or not Path("/tmp/escape.txt").exists()


def test_bytes_that_do_not_match_the_listing(scene: Scene, evil: FakeMember) -> None:
    """Not a listing problem: the transfer fails, and no partial file sits at a final name."""
    evil.routes["/files"] = listing(entry("liar.bin", hashlib.sha256(b"true").hexdigest()))
    evil.routes["/files/liar.bin"] = http_response(200, b"fals")
    join(scene, evil, "evil-liar")
    fetched = ctl(scene.carol.socket_path, "--json", "fetch", "evil-liar", "liar.bin", timeout=120)
    assert fetched.returncode == 1, fetched.stdout
    assert not (scene.carol.download_dir / "liar.bin").exists()


def test_a_member_without_repr_digest_is_told_it_does_not_speak_the_protocol(
    scene: Scene, evil: FakeMember
) -> None:
    """docs/protocol.md §4.3: the reason is the missing header, not a file that changed."""
    plain, odd = b"bare", b"odd!"
    evil.routes["/files"] = listing(
        entry("plain.bin", hashlib.sha256(plain).hexdigest()),
        entry("odd.bin", hashlib.sha256(odd).hexdigest()),
    )
    evil.routes["/files/plain.bin"] = http_response(200, plain)
    evil.routes["/files/odd.bin"] = http_response(200, odd, {"Repr-Digest": "sha-256=beef"})
    join(scene, evil, "evil-plain")
    for path, words in [
        ("plain.bin", "the answer has no Repr-Digest header"),
        ("odd.bin", "has no single sha-256 digest"),
    ]:
        fetched = ctl(scene.carol.socket_path, "--json", "fetch", "evil-plain", path, timeout=120)
        assert fetched.returncode == 1, fetched.stdout
        error = json.loads(fetched.stdout)["error"]
        assert words in error and "does not speak the p2pd peer protocol" in error, error
        assert "changed since it was listed" not in error
        assert not (scene.carol.download_dir / path).exists()


def test_a_member_that_never_answers(scene: Scene, evil: FakeMember) -> None:
    """TLS completes, then silence: `p2pctl ls` fails within about 30 s; carol keeps serving."""
    evil.routes["/files"] = HANG
    join(scene, evil, "evil-mute")
    started = time.monotonic()
    process = subprocess.Popen(
        [str(VENV_BIN / "p2pctl"), "--socket", str(scene.carol.socket_path), "ls", "evil-mute"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        poll(lambda: "/files" in evil.targets, timeout=30, what="carol to ask the mute member")
        # While that call waits, the daemon answers others.
        assert_serving(scene.carol.process, scene.carol.socket_path, scene.carol.log())
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    elapsed = time.monotonic() - started
    assert process.returncode == 1, stderr
    assert "evil-mute" in stderr
    assert elapsed < 40, f"p2pctl ls took {elapsed:.0f} s against a mute member"


def test_a_member_announcing_more_bytes_than_listed(scene: Scene, evil: FakeMember) -> None:
    """A disk-filling answer: refused on its length, before a byte is written."""
    # Bytes no other member of this module lists: no alternate source's failure
    # (a kept listing of evil-liar, gone since) becomes the transfer's last reason.
    listed = hashlib.sha256(b"huge").hexdigest()
    digest = base64.b64encode(bytes.fromhex(listed)).decode()
    evil.routes["/files"] = listing(entry("flood.bin", listed))
    evil.routes["/files/flood.bin"] = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n"
        + f"Repr-Digest: sha-256=:{digest}:\r\n\r\n".encode()
        + b"\0" * 200_000
    )
    join(scene, evil, "evil-flood")
    fetched = ctl(
        scene.carol.socket_path, "--json", "fetch", "evil-flood", "flood.bin", timeout=120
    )
    assert fetched.returncode == 1, fetched.stdout
    assert "where 4 bytes were expected" in json.loads(fetched.stdout)["error"]
    written = sum(p.stat().st_size for p in scene.carol.download_dir.iterdir() if p.is_file())
    assert written <= 4


# -- large bodies: received by worker threads (p2pd/tls/bodypump.py) ------------

MIB = 1024 * 1024


def file_answer(data: bytes, start: int = 0) -> bytes:
    """The head of an honest answer for ``data`` from ``start``; the caller adds the body."""
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    headers = {"Repr-Digest": f"sha-256=:{digest}:"}
    status, reason = 200, "OK"
    if start:
        status, reason = 206, "Partial Content"
        headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
    return http_response(status, b"", headers, reason).replace(
        b"Content-Length: 0", f"Content-Length: {len(data) - start}".encode()
    )


def range_start(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"range":
            return int(value.strip().removeprefix(b"bytes=").split(b"-")[0])
    return 0


def test_a_member_that_resets_mid_body_is_resumed(scene: Scene, evil: FakeMember) -> None:
    """RST after 2 of 3 MiB: the next attempt asks for the rest, and the file verifies."""
    data = os.urandom(3 * MIB)
    sha = hashlib.sha256(data).hexdigest()
    evil.routes["/files"] = listing(entry("reset.bin", sha, len(data)))

    def answer(target: str) -> bytes:
        start = range_start(evil.heads[-1])
        if start == 0:
            return file_answer(data) + data[: 2 * MIB] + RESET
        return file_answer(data, start) + data[start:]

    evil.routes["/files/reset.bin"] = answer
    partial = scene.carol.download_dir / f".{sha}.p2pd-partial"
    evil.before_reset = lambda: poll(
        lambda: partial.exists() and partial.stat().st_size >= MIB,
        timeout=60,
        what="carol to write the first MiB",
        every=0.02,
    )
    join(scene, evil, "evil-reset")
    fetched = ctl(
        scene.carol.socket_path, "--json", "fetch", "evil-reset", "reset.bin", timeout=120
    )
    assert fetched.returncode == 0, (fetched.stdout, scene.carol.log()[-2000:])
    outcome = json.loads(fetched.stdout)
    assert outcome["status"] == "ok", outcome
    assert sha256_file(Path(outcome["path"])) == sha
    resumed_from = [range_start(head) for head in evil.heads if b"reset.bin" in head]
    assert resumed_from[0] == 0 and 0 < resumed_from[-1] <= 2 * MIB, resumed_from
    assert "evil-reset closed the connection mid-answer" in scene.carol.log()
    Path(outcome["path"]).unlink()


def test_cancel_mid_body_ends_the_transfer_within_a_second(scene: Scene, evil: FakeMember) -> None:
    """2 of 3 MiB, then silence: `p2pctl cancel` ends it at once, not after the read timeout."""
    data = os.urandom(3 * MIB)
    sha = hashlib.sha256(data).hexdigest()
    evil.routes["/files"] = listing(entry("stall.bin", sha, len(data)))
    evil.routes["/files/stall.bin"] = file_answer(data) + data[: 2 * MIB] + HANG
    join(scene, evil, "evil-stall")
    carol = scene.carol.socket_path
    started = ctl(carol, "--json", "fetch", "--detach", "evil-stall", "stall.bin", timeout=60)
    assert started.returncode == 0, started.stderr
    transfer_id = json.loads(started.stdout)["id"]

    def transfer() -> dict[str, object] | None:
        downloads = json.loads(ctl(carol, "--json", "downloads", timeout=30).stdout)
        return next((d for d in downloads if d["id"] == transfer_id), None)

    poll(
        lambda: (t := transfer()) is not None and int(str(t["bytes_done"])) >= 2 * MIB,
        timeout=60,
        what="the first 2 MiB to arrive",
    )
    asked = time.monotonic()
    assert ctl(carol, "cancel", transfer_id, timeout=30).returncode == 0

    def cancelled() -> bool:
        history = json.loads(ctl(carol, "--json", "history", timeout=30).stdout)
        return any(h["id"] == transfer_id and h["status"] == "cancelled" for h in history)

    poll(cancelled, timeout=30, what="the cancel to be recorded", every=0.05)
    # A second is the promise; the rest is p2pctl's own start on a busy machine.
    assert time.monotonic() - asked < 2.5
    assert not (scene.carol.download_dir / "stall.bin").exists()
