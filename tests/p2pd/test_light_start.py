"""A running p2pd loads only what it uses: no HTTP client library, no cryptography
(its identity is made by the start-up child), no configuration loader, no metrics
or config-writing library unless asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from p2pcommon.identity import peer_id_from_pem
from p2pd.tls.identity import (
    CA_KDF_INFO,
    CA_KDF_LENGTH,
    CA_KDF_SALT,
    NETWORK_FILE,
    NetworkCA,
    _ca_key_material,
    build_certificate,
    load_for_network,
    load_or_create,
)
from tests.hostile.attacker import poll
from tests.support import SECRET, run_p2pd, run_registryd

#: Loaded on some paths only (identity creation, metrics, config writing, the
#: signature package's fallback), or not at all (the registry's store, the CLI's).
HEAVY = [
    "httpx",
    "httpcore",
    "anyio",
    "cryptography",
    "http_message_signatures",
    "prometheus_client",
    "tomli_w",
    "redis",
    "rich",
]


def run_python(code: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


#: Loaded by the start-up child only (p2pd.prepare, registryd.prepare): the configuration
#: loader and what it brings.
START_UP_ONLY = ["pydantic_settings", "dotenv", "argparse", "asyncio", "p2pcommon.settings"]


def test_the_daemon_imports_none_of_the_heavy_packages() -> None:
    code = "import sys, p2pd.main, p2pd.daemon; print(' '.join(sorted(sys.modules)))"
    loaded = set(run_python(code).split())
    assert "p2pd.daemon" in loaded
    assert [name for name in [*HEAVY, *START_UP_ONLY] if name in loaded] == []


def test_registryd_imports_no_configuration_loader() -> None:
    code = "import sys, registryd.main, registryd.server; print(' '.join(sorted(sys.modules)))"
    loaded = set(run_python(code).split())
    assert "registryd.server" in loaded
    # cryptography comes with the first register (the member's certificate is checked).
    assert [name for name in [*START_UP_ONLY, "cryptography"] if name in loaded] == []


#: cryptography's compiled part (OpenSSL is linked into it), as /proc/PID/maps shows it.
CRYPTOGRAPHY_LIBRARY = "cryptography/hazmat/bindings/_rust"


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def test_a_first_start_leaves_no_cryptography_in_the_daemon(tmp_path: Path) -> None:
    # The probe sees the library where it is loaded: in this test process.
    assert CRYPTOGRAPHY_LIBRARY in Path(f"/proc/{os.getpid()}/maps").read_text()
    with (
        run_registryd(tmp_path) as registry,
        run_p2pd(tmp_path, "alice", [registry.url]) as alice,
    ):
        # A first start: the identity and the network CA were made, by cryptography...
        assert "created identity" in alice.log()
        assert (alice.state_dir / NETWORK_FILE).exists()
        cert_pem = (alice.state_dir / "identity.crt").read_text()
        assert alice.ctl_json("status")["id"] == peer_id_from_pem(cert_pem)
        # Its register was proven by the key, signed in a child too (p2pd.membership.keysign).
        poll(lambda: alice.ctl_json("status")["registered"], timeout=30, what="a register")
        # ...in the start-up child, which is gone, as is the signing child; the daemon
        # never loaded it.
        assert children_of(alice.process.pid) == []
        assert CRYPTOGRAPHY_LIBRARY not in Path(f"/proc/{alice.process.pid}/maps").read_text()


#: A restart: the identity and the network CA read back, and members of the CA met
#: by the server's contexts (the context each handshake with them would use), in a
#: fresh interpreter.
RESTART = """
import json, sys
import trio
from pathlib import Path
from p2pcommon.models import Member
from p2pd.tls.identity import load_for_network
from p2pd.tls.contexts import ServerContexts
state, secret, certs = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
identity, new, network = load_for_network(state, secret)
contexts = ServerContexts(identity, network)
async def meet():
    return [
        await contexts.for_member(
            Member(id=f"m{i}", name=f"m{i}", addresses=[], cert=cert, last_seen=0)
        )
        for i, cert in enumerate(certs)
    ]
met = trio.run(meet)
print(json.dumps({
    "id": identity.id, "new": new, "foreign": contexts.foreign,
    "anchors": max(c.cert_store_stats()["x509"] for c in [contexts.default, *met]),
    "cryptography": "cryptography" in sys.modules,
}))
"""


def issued_pems(network: NetworkCA | None, count: int) -> list[str]:
    key = ec.generate_private_key(ec.SECP256R1())
    return [
        build_certificate(key, network).public_bytes(serialization.Encoding.PEM).decode()
        for _ in range(count)
    ]


def restart(state: Path, secret: str, certs: list[str]) -> dict[str, object]:
    result: dict[str, object] = json.loads(
        run_python(RESTART, str(state), secret, json.dumps(certs))
    )
    return result


def test_a_restart_needs_no_cryptography(tmp_path: Path) -> None:
    identity, new, network = load_for_network(tmp_path, SECRET)
    assert new and (tmp_path / NETWORK_FILE).exists()
    members = issued_pems(NetworkCA.from_secret(SECRET), 3)
    again = restart(tmp_path, SECRET, members)
    assert again == {
        "id": identity.id,
        "new": False,
        "foreign": 0,
        "anchors": 2,  # the network CA and our own certificate
        "cryptography": False,
    }
    # A self-signed member (its own anchor) is parsed, as before: then cryptography comes.
    foreign = restart(tmp_path, SECRET, [*members, *issued_pems(None, 1)])
    assert foreign["foreign"] == 1 and foreign["anchors"] == 3 and foreign["cryptography"]


def test_another_secret_or_identity_is_checked_in_full(tmp_path: Path) -> None:
    first, _, _ = load_for_network(tmp_path, SECRET)
    # Another secret: re-issued by the other CA, and remembered for that one.
    moved = restart(tmp_path, "another network secret", [])
    assert moved["id"] != first.id and moved["cryptography"]
    assert restart(tmp_path, "another network secret", [])["cryptography"] is False
    # Back to the first: re-issued again (a new id), not a stale record's word.
    back, new, _ = load_for_network(tmp_path, SECRET)
    assert not new and back.id not in (first.id, moved["id"])
    # An identity replaced behind our back (a restored backup, self-signed): checked again.
    load_or_create(tmp_path / "other")
    for name in ("identity.key", "identity.crt"):
        (tmp_path / name).write_bytes((tmp_path / "other" / name).read_bytes())
    restored = restart(tmp_path, SECRET, [])
    assert restored["cryptography"] and restored["id"] != back.id


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated", "edited"])
def test_a_damaged_record_costs_only_the_slow_path(tmp_path: Path, damage: str) -> None:
    identity, _, first = load_for_network(tmp_path, SECRET)
    record = tmp_path / NETWORK_FILE
    assert record.stat().st_mode & 0o777 == 0o600
    if damage == "missing":
        record.unlink()
    elif damage == "garbage":
        record.write_text("nonsense\n")
    elif damage == "truncated":
        record.write_text(record.read_text()[:200])
    else:  # one character of the CA certificate's base64: still a certificate, not ours
        head, _, pem = record.read_text().partition("\n")
        lines = pem.split("\n")
        lines[3] = lines[3][:10] + ("A" if lines[3][10] != "A" else "B") + lines[3][11:]
        record.write_text(head + "\n" + "\n".join(lines))
    damaged = record.read_text() if record.exists() else ""
    again, new, network = load_for_network(tmp_path, SECRET)
    assert (again.id, new) == (identity.id, False)
    # The CA derived from the secret, not the file's (ECDSA signatures differ per issue).
    derived, kept = (x509.load_pem_x509_certificate(c.cert_pem.encode()) for c in (network, first))
    assert derived.subject == kept.subject
    assert derived.public_key() == kept.public_key()
    assert network.cert_pem not in damaged
    assert restart(tmp_path, SECRET, [])["cryptography"] is False  # repaired


def test_the_key_derivation_is_the_packages_hkdf() -> None:
    for secret in ("x" * 8, SECRET, "é" * 40):
        theirs = HKDF(
            algorithm=hashes.SHA256(), length=CA_KDF_LENGTH, salt=CA_KDF_SALT, info=CA_KDF_INFO
        ).derive(secret.encode())
        assert _ca_key_material(secret) == theirs
