"""A registry restart with many peers behind one address (issue 20: new ids per source).

Runs a real registryd (memory store) and N registry links, p2pd's own
``RegistryLink`` with its retry rules, all from 127.0.0.1 as peers behind one
NAT would be.  Measures how long until all are registered, then restarts the
registry on the same port (it forgets everyone: each is a new id again, taking
a token of the one source's bucket) and measures how long until all are
registered again.  Register proofs are signed in this process (cryptography),
not by p2pd's child, so that only the registry's limit is measured.

    .venv/bin/python -m bench.nat_restart [--peers 100] [--burst 60] [--rate 1]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench.transfer import BIN, SECRET, free_port
from p2pcommon.identity import peer_id_from_pem
from p2pcommon.models import RegisterRequest
from p2pcommon.registry_client import RegistryClient
from p2pcommon.signing.member_proof import sign_base
from p2pd.membership.directory import Directory
from p2pd.membership.link import RegistryLink
from p2pd.tls.identity import build_certificate


def start_registry(port: int, burst: int, rate: float, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "REGISTRYD_SECRET": SECRET,
        "REGISTRYD_LISTEN": f"127.0.0.1:{port}",
        "REGISTRYD_NEW_MEMBER_BURST": str(burst),
        "REGISTRYD_NEW_MEMBER_RATE": str(rate),
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(BIN / "registryd"), "--config", os.devnull], env=env, stderr=out
        )
    deadline = time.monotonic() + 30
    while "serving on" not in log.read_text():
        if time.monotonic() > deadline or process.poll() is not None:
            raise SystemExit(f"bench: registryd did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=20)


class Peer:
    def __init__(self, number: int) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        pem = build_certificate(self.key).public_bytes(serialization.Encoding.PEM).decode()
        self.registration = RegisterRequest(
            id=peer_id_from_pem(pem), name=f"p{number}", cert=pem, port=7000 + number
        )

    async def prove(self, base: bytes) -> bytes:
        return sign_base(self.key, base)


async def until_all(links: list[RegistryLink], since: float) -> float:
    while not all(link.registered for link in links):
        if time.monotonic() - since > 600:
            raise SystemExit("bench: not all registered within 600 s")
        await trio.sleep(0.05)
    return time.monotonic() - since


async def run(peers: int, burst: int, rate: float, folder: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = folder / "registryd.log"
    registry = start_registry(port, burst, rate, log)
    everyone = [Peer(n) for n in range(peers)]
    links: list[RegistryLink] = []
    try:
        async with trio.open_nursery() as nursery:
            started = time.monotonic()
            for peer in everyone:
                client = RegistryClient([url], SECRET)
                link = RegistryLink(
                    client,
                    peer.registration,
                    Directory(peer.registration.id, client, interval=10.0),
                    prove=peer.prove,
                    heartbeat_interval=10.0,
                )
                links.append(link)
                nursery.start_soon(link.run)
            first = await until_all(links, started)
            print(f"{peers} peers behind one address, all registered: {first:.1f} s")
            stop(registry)
            before = log.read_text().count("INFO registryd: registered ")
            restarted = time.monotonic()
            registry = start_registry(port, burst, rate, log)
            # The links learn of the restart at their next heartbeat (404), then
            # register again: counted in the new process's log.
            while log.read_text().count("INFO registryd: registered ") < before + peers:
                if time.monotonic() - restarted > 600:
                    raise SystemExit("bench: not all registered again within 600 s")
                await trio.sleep(0.1)
            again = time.monotonic() - restarted
            print(
                f"after a registry restart: all registered again {again:.1f} s after it "
                f"(burst {burst}, {rate:g}/s; heartbeat interval 10 s)"
            )
            nursery.cancel_scope.cancel()
    finally:
        stop(registry)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=100)
    parser.add_argument("--burst", type=int, default=60)
    parser.add_argument("--rate", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-nat-") as tmp:
        trio.run(run, args.peers, args.burst, args.rate, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
