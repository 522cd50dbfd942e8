"""An implementer with docs/protocol.md only: a peer written from its text works with p2pd.

The independent peer (tests/interop/indie_*.py) imports nothing of the
project; a test below checks that.  It is a *foreign* member: its own
self-signed certificate (§1).  Against a real registryd and a real p2pd it
registers with requests it signs by hand, verifies the registry's signed
answers, is admitted, lists p2pd's share and fetches a file by ranges with
every check of §4.3, serves a file that p2pd fetches (``p2pctl fetch``) and
resumes after a cut, and is refused once it left.  Each test names the
sections of the document its steps rely on.
"""

from __future__ import annotations

import ast
import hashlib
import os
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.interop.indie_client import Refused
from tests.interop.indie_peer import IndependentPeer
from tests.support import SECRET, RunningPeer, RunningRegistry, run_p2pd, run_registryd

FAST = "heartbeat_interval = 0.5\n"
MIB = 1024 * 1024
#: In bob's share; a space to encode (§4.3) and a folder (§4.1).
BOB_PATH, BOB_DATA = "music/a song.bin", os.urandom(700_000)
#: In the independent peer's share: large enough for p2pd to resume it (§5).
INDIE_PATH, INDIE_DATA = "docs/indie notes.bin", os.urandom(3 * MIB)
INDIE_CUT = MIB
PEER_TTL = 9
INTEROP = Path(__file__).parent


def poll(check: Callable[[], Any], *, what: str, timeout: float = 30) -> Any:
    """``check()``'s first truthy result; real processes need time, not an event."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except (Refused, OSError) as exc:  # ssl.SSLError is an OSError
            result, last = None, exc
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


@dataclass
class Network:
    base: Path
    registry: RunningRegistry
    bob: RunningPeer
    indie: IndependentPeer


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    base = tmp_path_factory.mktemp("interop")
    (base / "bob" / "share" / "music").mkdir(parents=True)
    (base / "bob" / "share" / BOB_PATH).write_bytes(BOB_DATA)
    with (
        # A short lease, so that the independent peer heartbeats within the module.
        run_registryd(base, {"REGISTRYD_PEER_TTL": str(PEER_TTL)}) as registry,
        run_p2pd(base, "bob", [registry.url], extra_config=FAST) as bob,
        IndependentPeer(
            base / "indie", registry.url, SECRET, "indie", {INDIE_PATH: INDIE_DATA}
        ) as indie,
    ):
        yield Network(base, registry, bob, indie)
        assert indie.faults == [] and indie.server.faults == []


def test_the_independent_peer_uses_nothing_of_the_project() -> None:
    """Its modules import the standard library, cryptography and each other only."""
    for module in sorted(INTEROP.glob("indie_*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                allowed = top in sys.stdlib_module_names or top in ("__future__", "cryptography")
                assert allowed or name.startswith("tests.interop.indie_"), (module.name, name)


def test_registers_with_hand_signed_requests_and_verifies_answers__sections_2_and_3(
    network: Network,
) -> None:
    """§2.1 signing, §2.2 answer checks (inside every call), §3.2 register and
    /clients, §3.3 lease, pace and the observed address, §3.4 lookups and resolution."""
    indie = network.indie
    # §3.3: a third of peer_ttl for a small network, lengthened by up to 10 %.
    assert PEER_TTL / 3 <= indie.lease["heartbeat_interval"] <= PEER_TTL / 3 * 1.1
    assert indie.lease["ttl"] == round(3 * indie.lease["heartbeat_interval"], 3)
    assert indie.lease["members"] >= 1
    poll(lambda: indie.heartbeats > 0, what="a heartbeat at the advised interval (§3.3)")
    everyone = indie.registry.call("GET", "/clients").payload["clients"]
    me = next(record for record in everyone if record["id"] == indie.id)
    assert me["addresses"] == [f"127.0.0.1:{indie.server.port}"]
    bob = indie.member_named("bob")
    assert bob["addresses"] == [f"127.0.0.1:{network.bob.port}"]
    assert bob["cert"].startswith("-----BEGIN CERTIFICATE-----")
    looked_up = indie.lookup(bob["id"])
    assert looked_up is not None
    # The same record, but for bob's last heartbeat, which may come in between.
    assert looked_up["last_seen"] >= bob["last_seen"]
    assert {**looked_up, "last_seen": bob["last_seen"]} == bob


def test_lists_and_fetches_from_p2pd_by_range__sections_1_and_4(network: Network) -> None:
    """§1 admission and pinning, both ways: the member's certificate as the only
    anchor with partial-chain verification for the listing, any chain plus
    the id check for the file; §4.1/§4.2 listing validation; §4.3 Range,
    Content-Range and Repr-Digest on every piece, the sha256 at the end."""
    indie = network.indie
    bob = indie.member_named("bob")
    # p2pd admits a new member after its next heartbeat (§1 "Refusal delay", §3.4).
    listing = poll(lambda: indie.client.listing(bob), what="p2pd to admit the independent peer")
    entry = next(item for item in listing if item["path"] == BOB_PATH)
    assert entry["size"] == len(BOB_DATA)
    assert entry["sha256"] == hashlib.sha256(BOB_DATA).hexdigest()
    data = indie.client.fetch(bob, entry, piece=256 * 1024, pin="id-only")
    assert data == BOB_DATA


def test_a_pin_on_another_certificate_is_dropped__section_1(network: Network) -> None:
    """§1: the presented certificate's id must be the member's, else no request is sent."""
    indie = network.indie
    bob = indie.member_named("bob")
    poll(lambda: indie.client.listing(bob), what="p2pd to admit the independent peer")
    impostor = {**bob, "id": indie.id}
    with pytest.raises(Refused, match="not the member's certificate"):
        indie.client.listing(impostor, pin="id-only")
    with pytest.raises(Refused, match="certificate verify failed"):
        indie.client.listing({**bob, "cert": indie.identity.cert_pem})


def test_serves_a_file_that_p2pd_fetches_and_resumes__sections_1_and_4(
    network: Network,
) -> None:
    """§1 server side: client certificates chained to the network CA derived
    from the secret, a member check at every request; §4 Host required; §4.2
    the listing p2pd asks for; §4.3 a whole answer cut mid-body, then the
    Range p2pd resumes with, answered 206 with Content-Range and Repr-Digest."""
    indie, bob = network.indie, network.bob
    poll(
        lambda: "indie" in [peer["name"] for peer in bob.ctl_json("peers")],
        what="p2pd to list the independent peer",
    )
    indie.server.cut_next[INDIE_PATH] = INDIE_CUT
    outcome = bob.ctl_json("fetch", "indie", INDIE_PATH)
    outcome = outcome[0] if isinstance(outcome, list) else outcome
    assert outcome["status"] == "ok", outcome
    assert outcome["sha256"] == hashlib.sha256(INDIE_DATA).hexdigest()
    assert Path(outcome["path"]) == bob.download_dir / INDIE_PATH
    assert (bob.download_dir / INDIE_PATH).read_bytes() == INDIE_DATA

    bobs = [seen for seen in indie.server.seen if seen.client_id != indie.id]
    assert all("host" in seen.headers for seen in bobs)
    asked = [(seen.method, seen.target, seen.headers.get("range")) for seen in bobs]
    target = "/files/docs/indie%20notes.bin"
    assert ("GET", "/files", None) in asked
    whole = asked.index(("GET", target, None))
    ranges = [r for method, t, r in asked[whole + 1 :] if t == target and r is not None]
    assert ranges, f"p2pd did not resume: {asked}"
    resumed_from = int(ranges[0].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from <= INDIE_CUT, ranges


def test_a_member_that_left_is_refused__sections_1_and_3(network: Network) -> None:
    """§3.2 leave removes at once; §1 a member that left is refused (403 or in
    the handshake) within two heartbeat intervals."""
    with IndependentPeer(
        network.base / "leaver", network.registry.url, SECRET, "leaver", {}
    ) as leaver:
        bob = leaver.member_named("bob")
        poll(lambda: leaver.client.listing(bob), what="p2pd to admit the leaving peer")
        leaver.leave()

        def refused() -> bool:
            try:
                leaver.client.listing(bob)
            except Refused as exc:
                return "403" in str(exc) or "no address" in str(exc)
            except ssl.SSLError:
                return True
            return False

        poll(refused, what="p2pd to refuse a member that left", timeout=15)
