"""Searches against p2pd, and members that answer its searches badly (issue 23).

The attacker is a registered member with its own certificate: it sends raw
requests over its own TLS (a search of 1 MiB, a flood of searches), or it is a
fake member (tests.hostile.fake_member) that answers the victim's searches
forever, never, or with 100 MB of ``[``.  Each time the victim's search ends
within its deadline, counts that member silent, still has the good member's
answer, and the victim goes on serving.
"""

from __future__ import annotations

import json
import select
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hostile.attacker import (
    Attacker,
    Closed,
    assert_serving,
    build_request,
    ctl,
    peer_get,
    poll,
    read_response,
    register,
    tls,
)
from tests.hostile.fake_member import HANG, FakeMember
from tests.support import RunningPeer, RunningRegistry, run_p2pd, run_registryd

FAST = "heartbeat_interval = 0.5\n"
TIMEOUT = 3.0


@dataclass
class Scene:
    registry: RunningRegistry
    carol: RunningPeer  # the victim: searched, and searching
    dave: RunningPeer  # a good member
    mallory: Attacker  # a registered member with raw sockets


def memory_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.fixture(scope="module")
def scene(module_dir: Path) -> Iterator[Scene]:
    for name in ("carol", "dave"):
        (module_dir / name / "share").mkdir(parents=True)
        (module_dir / name / "share" / f"{name}-report.txt").write_bytes(name.encode() * 100)
    with run_registryd(module_dir, {"REGISTRYD_PEER_TTL": "600"}) as registry:
        urls = [registry.url]
        with (
            run_p2pd(module_dir, "carol", urls, extra_config=FAST) as carol,
            run_p2pd(module_dir, "dave", urls, extra_config=FAST) as dave,
        ):
            mallory = Attacker.new(module_dir / "mallory")
            assert register(registry.url, mallory, "mallory", 9).status == 200

            def admitted() -> bool:
                try:
                    return peer_get(carol.port, mallory, "/files").status == 200
                except (Closed, OSError):
                    return False

            poll(admitted, timeout=30, what="carol to admit mallory", every=0.25)
            poll(
                lambda: (
                    "carol-report" in ctl(dave.socket_path, "--json", "search", "report").stdout
                    and "dave-report" in ctl(carol.socket_path, "--json", "search", "report").stdout
                ),
                timeout=60,
                what="carol and dave to find each other's report",
                every=0.5,
            )
            yield Scene(registry, carol, dave, mallory)


def carol_searches(scene: Scene) -> tuple[dict[str, object], float]:
    """carol's `search report` (the deadline TIMEOUT): its document and how long it took."""
    started = time.monotonic()
    result = ctl(scene.carol.socket_path, "--json", "search", "report", "--timeout", str(TIMEOUT))
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    document: dict[str, object] = json.loads(result.stdout)
    return document, took


def assert_carol_fine(scene: Scene) -> None:
    carol = scene.carol
    assert_serving(carol.process, carol.socket_path, carol.log())
    answer = peer_get(carol.port, scene.mallory, "/files/carol-report.txt")
    assert (answer.status, answer.body) == (200, b"carol" * 100)


def join(scene: Scene, fake: FakeMember, name: str) -> None:
    assert register(scene.registry.url, fake.who, name, fake.port).status == 200


@pytest.fixture
def evil(scene: Scene, tmp_path: Path) -> Iterator[FakeMember]:
    who = Attacker.new(tmp_path)
    fake = FakeMember(who, [(scene.carol.state_dir / "identity.crt").read_text()], {})
    with fake:
        yield fake


def test_a_search_of_one_mib_is_refused_with_an_answer(scene: Scene) -> None:
    huge = build_request("GET", "/search?q=" + "a" * (1 << 20), {})
    sent = 0
    with tls(scene.carol.port, scene.mallory) as sock:
        # 8 KiB at a time, until the answer is there: the server answers once it
        # has read past its 16 KiB limit, and drains at most 64 KiB more before it
        # closes (writing all of it at once meets the reset of a closed connection).
        while sent < len(huge):
            sock.sendall(huge[sent : sent + 8192])
            sent += 8192
            if sock.pending() or select.select([sock], [], [], 0.2)[0]:
                break
        try:
            answer = read_response(sock)
        except Closed as exc:
            pytest.fail(f"closed without an answer once TLS was up (after {sent} bytes): {exc}")
    assert answer.status == 431, answer.status
    assert answer.json()["error"] == "header section too large"
    # Under the header limit but over the target's: 400, naming what to shorten.
    long = peer_get(scene.carol.port, scene.mallory, "/search?q=" + "a" * 8000)
    assert long.status == 400 and long.json()["error"] == "bad query"
    assert long.json()["message"].startswith("target: longer than 4096 bytes")
    assert_carol_fine(scene)


def test_a_search_flood_is_limited_per_member_and_others_still_search(scene: Scene) -> None:
    statuses: list[int] = []
    started = time.monotonic()
    with tls(scene.carol.port, scene.mallory) as sock:
        for _ in range(200):
            sock.sendall(build_request("GET", "/search?q=report", {}))
            answer = read_response(sock)
            statuses.append(answer.status)
            if answer.status == 429:
                assert int(answer.headers["retry-after"]) >= 1
    took = time.monotonic() - started
    served = statuses.count(200)
    assert set(statuses) <= {200, 429}
    # A burst of 10, then 5 a second.
    assert served <= 10 + 5 * took + 1, (served, took)
    # dave is another member: carol still answers his search, at once.
    result = ctl(scene.dave.socket_path, "--json", "search", "carol-report")
    document = json.loads(result.stdout)
    assert document["refused"] == 0 and document["answered"] >= 1
    assert [m["name"] for m in document["results"][0]["members"]] == ["carol"]
    assert_carol_fine(scene)


def endless_search_answer(target: str) -> Iterator[bytes]:
    """A chunked answer that never ends: a piece of a JSON array every 50 ms."""
    yield b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    yield b'10\r\n{"generation":1,\r\n'
    while True:
        time.sleep(0.05)
        yield b'5\r\n"x":[\r\n'


def hundred_mb_of_brackets(target: str) -> Iterator[bytes]:
    yield b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
    for _ in range(100):
        yield b"[" * (1 << 20)


def brackets_without_length(target: str) -> Iterator[bytes]:
    """The same without Content-Length: counted as it arrives, and cut."""
    yield b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"100000\r\n" + b"[" * (1 << 20) + b"\r\n"
    for _ in range(100):
        yield chunk


@pytest.mark.parametrize(
    "answer",
    [endless_search_answer, HANG, hundred_mb_of_brackets, brackets_without_length],
    ids=["forever", "never", "100MB-of-brackets", "chunked-brackets"],
)
def test_a_member_that_answers_searches_badly_costs_only_its_own_answer(
    scene: Scene, evil: FakeMember, answer: object
) -> None:
    evil.routes["/search*"] = answer  # type: ignore[assignment]
    join(scene, evil, "evil")
    before = memory_kib(scene.carol.process.pid)
    document, took = carol_searches(scene)
    after = memory_kib(scene.carol.process.pid)
    assert took < TIMEOUT + 3, took
    assert any(t.startswith("/search?") for t in evil.targets), evil.targets
    # dave answers; evil does not, nor mallory (registered at a port nobody listens
    # on) nor the evil members of the tests before (their servers are gone).
    members = document["members"]
    assert isinstance(members, int) and members >= 3
    assert (document["answered"], document["silent"], document["refused"]) == (
        1,
        members - 1,
        0,
    ), document
    results = document["results"]
    assert isinstance(results, list)
    names = {m["name"] for r in results for m in r["members"]}
    assert names == {"dave"}  # carol does not ask herself; evil gave nothing usable
    assert after - before < 64 * 1024, (before, after)  # KiB: no 100 MB held
    assert_carol_fine(scene)
