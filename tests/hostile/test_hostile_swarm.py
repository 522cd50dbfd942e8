"""A hostile member in a many-source download (docs/protocol.md §5.2), and piece requests
out of range against a real member (§4.4).

The victim, carol, fetches a file that two honest members (dave, erin) and a
fake one list with the same sha256; the fake is the member carol names, so
that its piece layer and its root are the ones tried first.  Whatever it
sends, the file lands whole and verified, and the fake is named where it
lied.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from p2pd.share.merkle import leaf_hashes, merkle_root, piece_layer_from_leaves, piece_size_for
from tests.hostile.attacker import (
    Attacker,
    Closed,
    ctl,
    joined,
    peer_get,
    poll,
    register,
    sha256_file,
)
from tests.hostile.fake_member import HANG, FakeMember, http_response, listing
from tests.support import RunningPeer, RunningRegistry, run_p2pd, run_registryd

FAST = "heartbeat_interval = 0.5\n"
MiB = 1024 * 1024
DATA = os.urandom(2 * MiB + 777)
SHA = hashlib.sha256(DATA).hexdigest()
PIECE = piece_size_for(len(DATA))
PIECES = -(-len(DATA) // PIECE)


def pieces_of(data: bytes) -> tuple[bytes, bytes]:
    """(root, piece layer) of ``data``."""
    root = merkle_root(data)
    assert root is not None
    return root, piece_layer_from_leaves(leaf_hashes(data), PIECE)


ROOT, LAYER = pieces_of(DATA)


@dataclass
class Scene:
    base: Path
    registry: RunningRegistry
    carol: RunningPeer  # the victim
    dave: RunningPeer
    erin: RunningPeer


@pytest.fixture(scope="module")
def scene(module_dir: Path) -> Iterator[Scene]:
    for name in ("dave", "erin"):
        (module_dir / name / "share").mkdir(parents=True)
        (module_dir / name / "share" / "big.bin").write_bytes(DATA)
    with run_registryd(module_dir, {"REGISTRYD_PEER_TTL": "600"}) as registry:
        urls = [registry.url]
        with (
            run_p2pd(module_dir, "carol", urls, extra_config=FAST) as carol,
            run_p2pd(module_dir, "dave", urls, extra_config=FAST) as dave,
            run_p2pd(module_dir, "erin", urls, extra_config=FAST) as erin,
        ):
            yield Scene(module_dir, registry, carol, dave, erin)


@pytest.fixture
def evil(scene: Scene, tmp_path: Path) -> Iterator[FakeMember]:
    who = Attacker.new(tmp_path)
    fake = FakeMember(who, [(scene.carol.state_dir / "identity.crt").read_text()], {})
    with fake:
        yield fake
    for leftover in scene.carol.download_dir.iterdir():
        leftover.unlink()  # the next test fetches the same bytes anew


def listed_entry(root: bytes) -> dict[str, Any]:
    return {
        "path": "big.bin",
        "size": len(DATA),
        "mtime": 0,
        "sha256": SHA,
        "root": root.hex(),
        "piece_size": PIECE,
    }


def layer_answer(layer: bytes) -> bytes:
    return http_response(200, layer, {"Content-Type": "application/octet-stream"})


def asked_range(head: bytes) -> tuple[int, int]:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"range":
            first, _, last = value.strip().removeprefix(b"bytes=").partition(b"-")
            return int(first), int(last) + 1
    raise AssertionError(f"a piece request without Range: {head!r}")


def piece_head(start: int, end: int, *, length: int | None = None) -> bytes:
    """An honest 206 head for bytes [start, end) of DATA; ``length`` may lie."""
    digest = base64.b64encode(bytes.fromhex(SHA)).decode()
    headers = {
        "Content-Range": f"bytes {start}-{end - 1}/{len(DATA)}",
        "Repr-Digest": f"sha-256=:{digest}:",
    }
    head = http_response(206, b"", headers, "Partial Content")
    return head.replace(b"Content-Length: 0", f"Content-Length: {length or end - start}".encode())


def join_and_list(scene: Scene, fake: FakeMember, name: str) -> None:
    """The fake joins; carol keeps every member's listing (her sources)."""
    assert register(scene.registry.url, fake.who, name, fake.port).status == 200
    carol = scene.carol
    for member in (name, "dave", "erin"):

        def has_it(member: str = member) -> bool:
            result = ctl(carol.socket_path, "--json", "ls", member, timeout=30)
            return result.returncode == 0 and any(
                f["sha256"] == SHA for f in json.loads(result.stdout)
            )

        poll(has_it, timeout=30, what=f"carol to keep {member}'s listing", every=0.3)


def fetch(scene: Scene, name: str) -> dict[str, Any]:
    result = ctl(scene.carol.socket_path, "--json", "fetch", name, "big.bin", timeout=120)
    assert result.returncode == 0, result.stderr
    outcome: dict[str, Any] = json.loads(result.stdout)
    assert outcome["status"] == "ok", outcome
    assert sha256_file(Path(outcome["path"])) == SHA
    return outcome


def source(outcome: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [s for s in outcome["sources"] if s["name"] == name]
    assert len(found) == 1, outcome["sources"]
    return found[0]


def honest_pieces(fake: FakeMember) -> bytes:
    start, end = asked_range(fake.current_head())
    return piece_head(start, end) + DATA[start:end]


def test_a_piece_layer_that_does_not_match_the_root(scene: Scene, evil: FakeMember) -> None:
    bad = bytearray(LAYER)
    bad[40] ^= 1  # the second piece's hash: the layer no longer folds up to the root
    evil.routes["/files"] = listing(listed_entry(ROOT))
    evil.routes["/layers/big.bin"] = layer_answer(bytes(bad))
    evil.routes["/files/big.bin"] = lambda target: honest_pieces(evil)
    join_and_list(scene, evil, "evil-layer")
    outcome = fetch(scene, "evil-layer")
    named = source(outcome, "evil-layer")
    assert named["liar"] and named["bytes"] == 0, named
    assert "/files/big.bin" not in evil.targets  # dropped before any piece was asked
    assert {s["name"] for s in outcome["sources"] if s["bytes"]} == {"dave", "erin"}
    assert "evil-layer sent a bad piece layer" in scene.carol.log()


def test_a_root_that_does_not_match_the_sha256(scene: Scene, evil: FakeMember) -> None:
    """Other bytes of the same size, consistently: every piece verifies against the root
    the fake listed, and only the whole file's sha256 shows the lie.  The members that
    listed that root are named; the honest ones, who list the true root, finish."""
    other = os.urandom(len(DATA))
    other_root, other_layer = pieces_of(other)

    def other_piece(target: str) -> bytes:
        start, end = asked_range(evil.current_head())
        return piece_head(start, end) + other[start:end]

    evil.routes["/files"] = listing(listed_entry(other_root))
    evil.routes["/layers/big.bin"] = layer_answer(other_layer)
    evil.routes["/files/big.bin"] = other_piece
    join_and_list(scene, evil, "evil-root")
    outcome = fetch(scene, "evil-root")
    named = source(outcome, "evil-root")
    assert named["liar"], named
    assert not source(outcome, "dave")["liar"] and not source(outcome, "erin")["liar"]
    log = scene.carol.log()
    assert "evil-root listed the pieces root" in log and "do not make the listed sha256" in log
    # Avoided for this content: the next fetch does not ask it at all.
    asked = len(evil.targets)
    Path(outcome["path"]).unlink()
    again = fetch(scene, "dave")
    assert "evil-root" not in {s["name"] for s in again["sources"]}
    assert len(evil.targets) == asked


def test_a_source_that_stalls_mid_piece(scene: Scene, evil: FakeMember) -> None:
    """Half of each piece, then silence: its pieces are fetched from the others long
    before any deadline of the stalled connections."""

    def half_then_silence(target: str) -> bytes:
        start, end = asked_range(evil.current_head())
        return piece_head(start, end) + DATA[start : start + (end - start) // 2] + HANG

    evil.routes["/files"] = listing(listed_entry(ROOT))
    evil.routes["/layers/big.bin"] = layer_answer(LAYER)
    evil.routes["/files/big.bin"] = half_then_silence
    join_and_list(scene, evil, "evil-stall")
    started = time.monotonic()
    outcome = fetch(scene, "evil-stall")
    assert time.monotonic() - started < 30  # the read deadline of a piece is 60 s
    assert source(outcome, "evil-stall")["bytes"] == 0
    assert source(outcome, "dave")["bytes"] + source(outcome, "erin")["bytes"] == len(DATA)
    assert evil.targets.count("/files/big.bin") >= 1


@pytest.mark.parametrize("how", ["announced", "appended"])
def test_a_source_that_sends_more_bytes_than_the_piece(
    scene: Scene, evil: FakeMember, how: str
) -> None:
    """``announced``: a Content-Length beyond the piece (refused before its body is read);
    ``appended``: the piece, then 1 MiB more on the kept-alive connection (never taken
    for the next answer).  Either way no extra byte is written and the file is whole."""

    def too_much(target: str) -> bytes:
        start, end = asked_range(evil.current_head())
        if how == "announced":
            return piece_head(start, end, length=end - start + MiB) + DATA[start:end] + bytes(MiB)
        return piece_head(start, end) + DATA[start:end] + os.urandom(MiB)

    evil.routes["/files"] = listing(listed_entry(ROOT))
    evil.routes["/layers/big.bin"] = layer_answer(LAYER)
    evil.routes["/files/big.bin"] = too_much
    join_and_list(scene, evil, f"evil-{how}")
    outcome = fetch(scene, f"evil-{how}")
    assert Path(outcome["path"]).stat().st_size == len(DATA)
    named = source(outcome, f"evil-{how}")
    assert not named["liar"]  # it broke the framing, not a hash: dropped, not named a liar
    if how == "announced":
        assert named["bytes"] == 0, named
        assert "announced ['" in scene.carol.log()
    assert source(outcome, "dave")["bytes"] + source(outcome, "erin")["bytes"] >= (
        len(DATA) - named["bytes"]
    )


def test_piece_requests_out_of_range_are_refused_with_nothing_served(
    scene: Scene, tmp_path: Path
) -> None:
    """Against a real member: a range past the end, or backwards, answers 416 with the
    file's size and no byte of it; one piece in range answers exactly that piece."""
    who = Attacker.new(tmp_path)
    joined(scene.registry.url, who, "mallory", 9)
    port = scene.dave.port

    def admitted() -> bool:
        try:
            return peer_get(port, who, "/files").status == 200
        except (Closed, OSError):
            return False  # not yet in dave's list of members: refused in the handshake

    poll(admitted, timeout=30, what="dave to admit mallory", every=0.3)
    size = len(DATA)
    for wanted in (f"bytes={size}-{size + PIECE - 1}", f"bytes={size + 10}-", "bytes=500-100"):
        answer = peer_get(port, who, "/files/big.bin", {"Range": wanted})
        assert answer.status == 416, (wanted, answer.status)
        assert answer.headers["content-range"] == f"bytes */{size}"
        assert DATA[:64] not in answer.body and len(answer.body) < 1024
    last = (PIECES - 1) * PIECE
    answer = peer_get(port, who, "/files/big.bin", {"Range": f"bytes={last}-{size - 1}"})
    assert answer.status == 206 and answer.body == DATA[last:]
    assert answer.headers["content-range"] == f"bytes {last}-{size - 1}/{size}"
    layer = peer_get(port, who, "/layers/big.bin")
    assert layer.status == 200 and layer.body == LAYER
