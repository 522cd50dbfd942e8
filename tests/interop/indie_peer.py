"""An independent p2p peer, written from docs/protocol.md alone (the parts in indie_*.py).

It is a *foreign* member (§1): its own self-signed certificate.  It
registers and heartbeats (§2, §3.2, §3.3), looks members up (§3.4),
downloads from them (indie_client) and serves its own share (indie_server).
Standard library and ``cryptography`` only: nothing of the project.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.interop.indie_client import PeerClient
from tests.interop.indie_identity import Identity, network_ca_pem, new_identity
from tests.interop.indie_registry import Registry, RegistryRefused
from tests.interop.indie_server import PeerServer

#: Seconds an answer "no such member" is kept (§3.4: at most 2 s).
UNKNOWN_KEPT = 1.0


class IndependentPeer:
    def __init__(
        self, directory: Path, registry_url: str, secret: str, name: str, files: dict[str, bytes]
    ) -> None:
        self.name = name
        self.identity: Identity = new_identity(directory, name)
        self.registry = Registry(registry_url, secret)
        self.client = PeerClient(self.identity)
        self.server = PeerServer(self.identity, network_ca_pem(secret), files, self.is_member)
        #: id -> (its record, or None for no member; until when the answer is kept).
        self._looked_up: dict[str, tuple[dict[str, Any] | None, float]] = {}
        self.lease: dict[str, Any] = {}
        #: §3.3: the lease token of our last register, shown by heartbeats and the leave.
        self.token = ""
        self.faults: list[str] = []
        self.heartbeats = 0
        self._members_lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, daemon=True)
        self._left = False

    @property
    def id(self) -> str:
        return self.identity.id

    def __enter__(self) -> IndependentPeer:
        self.server.start()
        try:
            self.register()
        except BaseException:
            self.server.stop()
            raise
        self._heartbeat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._heartbeat.is_alive():
            self._heartbeat.join(timeout=15)
        if not self._left:
            self.leave()
        self.server.stop()

    # -- §3: the registry -------------------------------------------------

    def register(self) -> dict[str, Any]:
        """§3.2 ``POST /register`` without ``addresses``: the registry records the
        address it saw with our port (§3.3, observed address rule); proven by our
        key (§2.4)."""
        payload = {
            "id": self.id,
            "name": self.name,
            "cert": self.identity.cert_pem,
            "port": self.server.port,
        }
        member = (self.id, self.identity.key())
        self.lease = self.registry.call("POST", "/register", payload, member=member).payload
        self.token = self.lease["lease"]
        return self.lease

    def leave(self) -> None:
        """§3.2 ``POST /leave`` with our lease: removed at once."""
        self._left = True
        self._stop.set()
        self.registry.call("POST", "/leave", {"id": self.id, "lease": self.token})

    def _heartbeat_loop(self) -> None:
        """§3.3: heartbeat at the interval the registry advised; 404 (or 403, another
        lease) means register again."""
        while not self._stop.wait(float(self.lease["heartbeat_interval"])):
            try:
                body = {"id": self.id, "lease": self.token}
                self.lease = {
                    **self.lease,
                    **self.registry.call("POST", "/heartbeat", body).payload,
                }
                self.heartbeats += 1
            except RegistryRefused as exc:
                if " 404 " in str(exc) or " 403 " in str(exc):
                    self.register()
                else:
                    self.faults.append(f"heartbeat: {exc}")
            except Exception as exc:
                self.faults.append(f"heartbeat: {exc!r}")

    def lookup(self, member_id: str) -> dict[str, Any] | None:
        """§3.4 ``GET /members/<id>``: the member's record, or None (404)."""
        try:
            record: dict[str, Any] = self.registry.call("GET", f"/members/{member_id}").payload
            return record
        except RegistryRefused as exc:
            if " 404 " in str(exc):
                return None
            raise

    def member_named(self, name: str) -> dict[str, Any]:
        """§3.4 ``GET /resolve/<text>``: the one member of that name."""
        answer = self.registry.call("GET", "/resolve/" + quote(name, safe="")).payload
        if answer.get("query") != name:
            raise RegistryRefused(f"a resolution of another text: {answer!r}")
        found: list[dict[str, Any]] = [m for m in answer["members"] if m["name"] == name]
        assert len(found) == 1, f"members named {name}: {found}"
        return found[0]

    def is_member(self, client_id: str) -> bool:
        """§1: a request is admitted only from a current member, checked every time:
        looked up, a member kept for one heartbeat interval, no member for a second."""
        now = time.monotonic()
        with self._members_lock:
            kept = self._looked_up.get(client_id)
        if kept is not None and now < kept[1]:
            return kept[0] is not None
        try:
            record = self.lookup(client_id)
        except Exception as exc:
            self.faults.append(f"member lookup: {exc!r}")
            return False
        interval = float(self.lease.get("heartbeat_interval", UNKNOWN_KEPT))
        with self._members_lock:
            self._looked_up[client_id] = (record, now + (interval if record else UNKNOWN_KEPT))
        return record is not None
