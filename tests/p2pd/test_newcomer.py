"""What a newcomer following the README meets with p2pctl: Ctrl-C and cancel,
rescan, failures with --json, a file already there, a mistyped PEER, a member
that does not answer. Real registryd, two real p2pd and the real p2pctl.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.hostile.attacker import Attacker, peer_get
from tests.p2pd.test_e2e import FAST, Network, meet
from tests.support import VENV_BIN, RunningPeer, run_p2pd, run_registryd, wait_until

BIG = 8 * 1024 * 1024
#: Bob serves 256 KiB/s: the big file takes half a minute, time to interrupt it.
SLOW = FAST + f"upload_rate_limit = {256 * 1024}\n"


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    # A long ttl: a member killed without a goodbye stays listed, as on a real network.
    with run_registryd(tmp_path, {"REGISTRYD_PEER_TTL": "30"}) as registry:
        share = tmp_path / "bob" / "share"
        share.mkdir(parents=True)
        (share / "hello.txt").write_text("hello from bob\n")
        (share / "big.bin").write_bytes(os.urandom(BIG))
        with (
            run_p2pd(tmp_path, "alice", [registry.url], extra_config=FAST) as alice,
            run_p2pd(tmp_path, "bob", [registry.url], extra_config=SLOW) as bob,
        ):
            yield Network(registry, alice, bob)


def partial_of(peer: RunningPeer, shared: Path) -> Path:
    sha256 = hashlib.sha256(shared.read_bytes()).hexdigest()
    return peer.download_dir / f".{sha256}.p2pd-partial"


def start_fetch(peer: RunningPeer, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(VENV_BIN / "p2pctl"), "--socket", str(peer.socket_path), "fetch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def transfer_under_way(peer: RunningPeer, partial: Path) -> str:
    """The id of the one transfer, once bytes of it are on disk."""
    transfers: list[dict[str, Any]] = []

    async def receiving() -> bool:
        transfers[:] = await peer.actl_json("downloads")
        return (
            bool(transfers) and transfers[0]["bytes_done"] > 0 and await trio.Path(partial).exists()
        )

    await wait_until(receiving, what="the transfer to receive its first bytes")
    return str(transfers[0]["id"])


def errors_in(peer: RunningPeer) -> list[str]:
    return [line for line in peer.log().splitlines() if " ERROR " in line]


async def test_a_client_going_away_is_no_failure_and_cancel_answers_once_the_partial_is_gone(
    network: Network,
) -> None:
    alice, bob = network.alice, network.bob
    await meet(alice, bob)
    partial = partial_of(alice, bob.share_dir / "big.bin")

    # Ctrl-C, the README's way to cancel: p2pctl cancels, and exits when the partial is gone.
    fetching = start_fetch(alice, "bob", "big.bin")
    transfer_id = await transfer_under_way(alice, partial)
    fetching.send_signal(signal.SIGINT)
    _, stderr = await trio.to_thread.run_sync(fetching.communicate, None, 60)
    assert fetching.returncode == 1
    assert f"cancelled transfer {transfer_id}" in stderr
    assert not partial.exists()
    (cancelled,) = await alice.actl_json("history")
    assert (cancelled["id"], cancelled["status"]) == (transfer_id, "cancelled")

    # kill -9 of a waiting fetch: the transfer goes on; `cancel` ends it.
    fetching = start_fetch(alice, "bob", "big.bin")
    transfer_id = await transfer_under_way(alice, partial)
    fetching.kill()
    await trio.to_thread.run_sync(fetching.communicate, None, 60)
    answer = await alice.actl_json("cancel", transfer_id)
    assert answer == {"id": transfer_id, "cancelled": True}
    assert not partial.exists()  # at once: the answer came after it was removed
    assert await alice.actl_json("downloads") == []

    status = await alice.actl_json("status")
    assert status["failures"] == {}, alice.log()
    assert errors_in(alice) == []


async def test_rescan_reports_the_generation_the_members_see(network: Network) -> None:
    alice, bob = network.alice, network.bob
    await meet(alice, bob)
    (bob.share_dir / "hello.txt").unlink()
    rescanned = await bob.actl_json("rescan")
    assert rescanned["shared_files"] == 1
    # What a member gets: GET /files over TLS with alice's own certificate.
    state = alice.state_dir
    pem = (state / "identity.crt").read_text()
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    status = await alice.actl_json("status")
    as_alice = Attacker(pem, der, state / "identity.crt", state / "identity.key", status["id"])
    listing = await trio.to_thread.run_sync(peer_get, bob.port, as_alice, "/files")
    assert listing.status == 200
    assert listing.headers["etag"] == f'"{rescanned["generation"]}"'
    assert json.loads(listing.body)["generation"] == rescanned["generation"]
    human = bob.ctl("rescan")
    assert (
        human.stdout
        == f"1 file shared (generation {rescanned['generation']}, the listing's ETag)\n"
    )


async def test_fetch_outcomes_say_what_happened_also_in_json(network: Network) -> None:
    alice, bob = network.alice, network.bob
    await meet(alice, bob)

    refused = alice.ctl("--json", "fetch", "bob", "nope.txt")
    assert refused.returncode == 1
    outcome = json.loads(refused.stdout)
    history = await alice.actl_json("history")
    assert outcome == history[0]  # the outcome, as the history records it
    assert {"id", "path", "remote_path", "size", "sha256", "status", "error", "peer_id"} <= set(
        outcome
    )
    assert (outcome["status"], outcome["remote_path"]) == ("failed", "nope.txt")
    assert outcome["peer_id"] == (await bob.actl_json("status"))["id"]
    assert "does not share 'nope.txt'" in outcome["error"] and outcome["error"] in refused.stderr
    folder = alice.ctl("--json", "fetch", "bob", "nothing/")
    assert folder.returncode == 1 and json.loads(folder.stdout)[0]["remote_path"] == "nothing/"
    # Any other failure: the error object, indented like every --json document.
    other = alice.ctl("--json", "ls", "nobody")
    assert other.returncode == 1
    assert json.loads(other.stdout) == {
        "error": json.loads(other.stdout)["error"],
        "exit_status": 1,
    }
    assert other.stdout.startswith('{\n  "error": ')

    first = alice.ctl("fetch", "bob", "hello.txt")
    assert first.returncode == 0 and "verified" in first.stdout and "already" not in first.stdout
    again = alice.ctl("fetch", "bob", "hello.txt")
    assert again.returncode == 0
    assert again.stdout.startswith(f"{alice.download_dir / 'hello.txt'}  15 B  already there")
    assert "verified" not in again.stdout
    as_json = await alice.actl_json("fetch", "bob", "hello.txt")
    assert (as_json["status"], as_json["already_there"], as_json["error"]) == ("ok", True, None)
    history = await alice.actl_json("history")
    assert [h["already_there"] for h in history[:4]] == [True, True, False, False]
    assert "(already there)" in alice.ctl("history").stdout


async def test_a_mistyped_peer_gets_a_suggestion_and_a_silent_one_a_reason(
    network: Network,
) -> None:
    alice, bob = network.alice, network.bob
    await meet(alice, bob)
    capital = alice.ctl("ls", "BOB")
    assert capital.returncode == 1
    assert capital.stderr == "p2pctl: no member named or prefixed 'BOB': did you mean bob?\n"
    assert "did you mean bob?" in alice.ctl("ls", "bbo").stderr
    own_id = (await alice.actl_json("status"))["id"]
    for own in (own_id[:7], "alice", "Alice"):
        itself = alice.ctl("ls", own)
        assert itself.returncode == 1
        assert itself.stderr == (
            f"p2pctl: {own!r} is this daemon itself: `p2pctl shared` lists what it shares\n"
        )

    bob.process.kill()  # no goodbye: the registry lists it until its lease runs out
    bob.process.wait(timeout=15)
    gone = alice.ctl("ls", "bob")
    assert gone.returncode == 1
    assert gone.stderr == (
        f"p2pctl: bob is registered but cannot be reached at 127.0.0.1:{bob.port} "
        "(connection refused): is its p2pd running? a firewall?\n"
    )
