"""Membership of this daemon: register, heartbeat, re-register, leave; keep the member list.

Runs in the background from start-up: the daemon serves whether or not a
registry answers, and the status says why it is not registered.

The member list is the registry's whole list (``GET /clients``), fetched
after each register and heartbeat.  (An interim: p2pd is to look members up
when it needs them, docs/protocol.md §3.4.)  A heartbeat that fails
(overload, outage) is retried as a heartbeat: only a registry that no longer
knows us gets a new register, so that an overloaded registry is not answered
with a wave of registrations.

Each register proves that we hold our identity key (docs/protocol.md §2.4:
``prove`` signs in a short child process) and gets a lease token, which our
heartbeats and our leave show.  A registry that holds another lease for us
(403: we registered again elsewhere since, or another process has our
identity) gets a new register too.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

from p2pcommon.backoff import Backoff
from p2pcommon.identity import short_id
from p2pcommon.memory import release_free_memory
from p2pcommon.models import Lease, Member, RegisterRequest
from p2pcommon.registry_client import (
    ProofError,
    RegistryClient,
    RegistryError,
    RegistryUnavailable,
    UnknownMember,
    WrongLease,
)
from p2pcommon.signing.member_proof import MemberProver
from p2pd.membership.members import Members

log = logging.getLogger("p2pd.registry")

#: Seconds the goodbye to the registry may take at shutdown.
LEAVE_DEADLINE = 3.0
#: Member records in one answer past which the memory its parse freed is given back.
RELEASE_AFTER_RECORDS = 256
#: Joins and leaves logged one by one at most; more are summed up in one line.
LOGGED_CHANGES = 20
#: Seconds the signing child gets: an interpreter, cryptography, one signature (≈ 0.1 s).
SIGN_DEADLINE = 10.0
#: Bytes of the signing child's answer.
MAX_SIGN_ANSWER = 4096


class KeySigner:
    """Signs signature bases with ``key_path`` in a short child (``python -m
    p2pd.membership.keysign``), one per signature, with a deadline: a MemberProver."""

    def __init__(self, key_path: Path, *, deadline: float = SIGN_DEADLINE) -> None:
        self.key_path = key_path
        self._deadline = deadline

    async def __call__(self, base: bytes) -> bytes:
        command = [sys.executable, "-m", "p2pd.membership.keysign", str(self.key_path)]
        shown = "python -m p2pd.membership.keysign"
        # The daemon is the service's main process: only it speaks to systemd.
        env = {name: value for name, value in os.environ.items() if name != "NOTIFY_SOCKET"}
        try:
            with trio.fail_after(self._deadline):
                done = await trio.run_process(
                    command, stdin=base, capture_stdout=True, check=False, env=env
                )
        except trio.TooSlowError:
            raise ProofError(
                f"{shown} did not sign the register within {self._deadline:g} s: is the "
                "machine overloaded, or state_dir on a file system that does not answer?"
            ) from None
        except OSError as exc:
            raise ProofError(f"cannot start {shown}: {exc.strerror or exc}") from None
        return _signature(done.stdout, done.returncode, shown)


def _signature(output: bytes, status: int, shown: str) -> bytes:
    try:
        answer = json.loads(output[:MAX_SIGN_ANSWER]) if len(output) <= MAX_SIGN_ANSWER else None
    except ValueError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("signature"), str):
        return base64.b64decode(answer["signature"])
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        raise ProofError(f"cannot sign the register: {answer['error']}")
    how = f"was killed by signal {-status}" if status < 0 else f"ended with status {status}"
    raise ProofError(f"{shown} {how} without a signature")


class RegistryLink:
    def __init__(
        self,
        client: RegistryClient,
        registration: RegisterRequest,
        members: Members,
        *,
        prove: MemberProver,
        heartbeat_interval: float,
        on_change: Callable[[], None] = lambda: None,
        backoff: Backoff | None = None,
    ) -> None:
        self._client = client
        self._registration = registration
        self._prove = prove
        #: The lease token of our last register (None: a registry older than leases).
        self._lease: str | None = None
        self._members = members
        self._own_interval = heartbeat_interval
        self._on_change = on_change
        self._backoff = backoff or Backoff(base=0.5, cap=30.0)
        self.registered = False
        self.error: str | None = "not registered yet"
        self.registered_since: float | None = None
        self._session = trio.CancelScope()
        client.spread(registration.id)
        members.add_listener(_log_changes)

    @property
    def client(self) -> RegistryClient:
        """The registry client: for lookups beyond the link's own (member pages)."""
        return self._client

    @property
    def registry_url(self) -> str | None:
        return self._client.current_url if self.registered else None

    def set_heartbeat_interval(self, seconds: float) -> None:
        self._own_interval = seconds
        self._session.cancel()

    def update_registration(self, registration: RegisterRequest) -> None:
        """Register again at once with a new name or addresses (a config reload)."""
        self._registration = registration
        self._session.cancel()

    async def run(self) -> None:
        while True:
            # Cancelled to start over with a changed registration or interval.
            with trio.CancelScope() as self._session:
                await self._session_loop()

    async def _session_loop(self) -> None:
        while True:
            try:
                lease = await self._client.register(self._registration, self._prove)
            except RegistryError as exc:
                self._failed(exc, lapsed=True)
                await trio.sleep(self._retry_delay(exc, self._backoff.cap))
                continue
            self._lease = lease.lease
            self._set_registered()
            await self._sync()
            try:
                await self._heartbeats(lease)
            except UnknownMember:
                # The registry restarted or our lease ran out: register again at once.
                log.info("the registry forgot us; registering again")
                self._set_unregistered("the registry forgot this member; registering again")
            except WrongLease:
                # Only the holder of our key can have registered since: we did,
                # elsewhere, or another p2pd runs with our state_dir.
                log.warning(
                    "the registry holds another lease for this member (did it register "
                    "again with another registry, or does another p2pd use %s's identity?); "
                    "registering again",
                    short_id(self._registration.id),
                )
                self._set_unregistered("the registry holds another lease; registering again")
                # Two processes with one identity would take turns: not faster than this.
                await trio.sleep(self._backoff.next_delay())

    async def _heartbeats(self, lease: Lease) -> None:
        """Heartbeat until the registry no longer knows us (UnknownMember)."""
        interval = self._interval(lease)
        lease_ends = trio.current_time() + lease.ttl
        delay = interval
        while True:
            await trio.sleep(delay)
            try:
                lease = await self._client.heartbeat(self._registration.id, self._lease)
            except (UnknownMember, WrongLease):
                raise
            except RegistryError as exc:
                # Our lease may well be live still; if not, the registry says so (404).
                self._failed(exc, lapsed=trio.current_time() >= lease_ends)
                delay = self._retry_delay(exc, interval)
                continue
            interval = delay = self._interval(lease)
            lease_ends = trio.current_time() + lease.ttl
            self._set_registered()
            await self._sync()

    def _interval(self, lease: Lease) -> float:
        return min(lease.heartbeat_interval, self._own_interval)

    def _retry_delay(self, exc: RegistryError, longest: float) -> float:
        """The registry's Retry-After, spread a little; else backoff; at most ``longest``.

        Capped also when the registry (or a proxy in front of it: the 503 is
        not signed) asks for longer: a heartbeat that waited past the lease
        would lose it.
        """
        wait = exc.retry_after if isinstance(exc, RegistryUnavailable) else None
        if wait is not None:
            # Spread over half the wait again: peers told the same wait must not return together.
            return min(wait * random.uniform(1.0, 1.5), longest)
        return min(self._backoff.next_delay(), longest)

    def _failed(self, exc: RegistryError, *, lapsed: bool) -> None:
        prefix = "not registered" if lapsed else "heartbeat failed, retrying"
        error = f"{prefix}: {_short_reason(exc)}"
        if self.error != error:
            log.warning("%s: %s", prefix, exc)
        if lapsed:
            self._set_unregistered(error)
        else:
            self.error = error

    def _set_registered(self) -> None:
        if not self.registered:
            log.info(
                "registered as %s (%s) with %s",
                short_id(self._registration.id),
                self._registration.name,
                self._client.current_url,
            )
            self.registered_since = time.time()
        self.registered = True
        self.error = None
        self._backoff.reset()

    def _set_unregistered(self, error: str) -> None:
        was = self.registered
        self.registered = False
        self.registered_since = None
        self.error = error
        if was:
            self._on_change()

    async def _sync(self) -> None:
        """Bring the member list to the registry's."""
        try:
            members = await self._client.clients()
        except RegistryError as exc:
            # Keep the last list: a registry hiccup must not cut off transfers, and the
            # next heartbeat asks again.
            log.warning("could not refresh the member list: %s", exc)
            return
        records = len(members)
        changed = self._members.update(members)
        del members
        if records >= RELEASE_AFTER_RECORDS:
            # The parse's garbage (megabytes at thousands of members) goes back.
            release_free_memory()
        if changed:
            self._on_change()

    async def leave(self) -> None:
        """Say goodbye, briefly: shutdown must not hang on an unreachable registry."""
        if not self.registered:
            return
        # Shielded, since shutdown is usually a cancellation; bounded by its own deadline.
        with trio.CancelScope(deadline=trio.current_time() + LEAVE_DEADLINE, shield=True):
            try:
                await self._client.leave(self._registration.id, self._lease)
                log.info("left the registry")
            except RegistryError as exc:
                log.warning("could not leave the registry: %s", exc)
        self.registered = False


def _short_reason(exc: RegistryError) -> str:
    if isinstance(exc, RegistryUnavailable) and exc.failures:
        return exc.failures[-1] if len(exc.failures) == 1 else "; ".join(exc.failures)
    return str(exc)


def _log_changes(joined: Sequence[Member], left: Sequence[Member]) -> None:
    # A member whose certificate changed is in both: it neither joined nor left.
    replaced = {m.id for m in joined} & {m.id for m in left}
    came = [m for m in joined if m.id not in replaced]
    went = [m for m in left if m.id not in replaced]
    if len(came) + len(went) + len(replaced) > LOGGED_CHANGES:
        log.info(
            "%d members joined, %d left, %d changed certificate",
            len(came),
            len(went),
            len(replaced),
        )
        return
    for member in came:
        log.info("member %s (%s) joined", short_id(member.id), member.name)
    for member in went:
        log.info("member %s left", short_id(member.id))
    for member in joined:
        if member.id in replaced:
            log.info("member %s (%s) has a new certificate", short_id(member.id), member.name)
