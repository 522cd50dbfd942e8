"""Several registryd processes on one port (``reuse_port``), sharing one Redis."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx

from p2pcommon.signing.signer import Signer
from tests.redis_process import running_redis
from tests.support import SECRET, VENV_BIN, Peer, free_port, registryd_env, run_registryd

CONNECTIONS = 24


def register_on_a_new_connection(url: str, peer: Peer) -> float:
    """Register ``peer``; the lease's ttl, which says which process answered."""
    body = json.dumps({"id": peer.id, "name": peer.name, "cert": peer.cert, "port": 7070})
    signer = Signer(SECRET)
    headers, nonce = signer.sign_request("POST", "/register", body.encode(), now=time.time())
    peer.add_proof(headers, "POST", "/register", nonce)
    # A client of its own: a new connection, which the kernel gives to one process.
    with httpx.Client() as client:
        answer = client.post(url + "/register", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    return float(answer.json()["ttl"])


def listed(url: str) -> set[str]:
    """The members of one page (fewer than 1000 here): fresh from the store."""
    headers, _ = Signer(SECRET).sign_request("GET", "/members", b"", now=time.time())
    answer = httpx.get(url + "/members?limit=1000", headers=headers)
    assert answer.status_code == 200, answer.text
    return {member["id"] for member in answer.json()["members"]}


def who(ttl: float) -> str:
    """Which process gave a lease: leases of 90–99 s or of 150–165 s (the jitter's 10 %)."""
    return "first" if ttl < 120 else "second"


def test_two_processes_serve_one_port_and_one_view(tmp_path: Path) -> None:
    port = free_port()
    peers = [Peer.new(f"peer-{n}") for n in range(CONNECTIONS)]
    with running_redis(tmp_path) as redis_url:
        shared = {"REGISTRYD_STORE": redis_url, "REGISTRYD_REUSE_PORT": "true"}
        # Each process tells a different lease, so that an answer says who gave it.
        with (
            run_registryd(tmp_path, {**shared, "REGISTRYD_PEER_TTL": "90"}, port=port) as first,
            run_registryd(tmp_path, {**shared, "REGISTRYD_PEER_TTL": "150"}, port=port) as second,
        ):
            assert first.url == second.url
            ttls = [register_on_a_new_connection(first.url, peer) for peer in peers]
            # The kernel spread the connections over both (all on one: odds 2 in 2**24).
            assert {who(ttl) for ttl in ttls} == {"first", "second"}
            assert listed(first.url) == {peer.id for peer in peers}
            # One of them going away leaves the port served by the other.
            assert first.stop() == 0
            late = Peer.new("late")
            assert who(register_on_a_new_connection(second.url, late)) == "second"
            assert late.id in listed(second.url)


def test_reuse_port_with_the_memory_store_is_refused_at_start(tmp_path: Path) -> None:
    config = tmp_path / "registryd.toml"
    config.write_text("reuse_port = true\n")
    result = subprocess.run(
        [str(VENV_BIN / "registryd"), "--config", str(config)],
        env=registryd_env(free_port()),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "reuse_port" in result.stderr
    assert "store" in result.stderr
