"""Membership of this daemon: register, heartbeat, re-register, leave; keep the member list.

Runs in the background from start-up: the daemon serves whether or not a
registry answers, and the status says why it is not registered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from p2pcommon.backoff import Backoff
from p2pcommon.identity import short_id
from p2pcommon.models import RegisterRequest
from p2pcommon.registry_client import (
    RegistryClient,
    RegistryError,
    RegistryUnavailable,
    UnknownMember,
)
from p2pd.members import Members

log = logging.getLogger("p2pd.registry")

#: Seconds the goodbye to the registry may take at shutdown.
LEAVE_DEADLINE = 3.0


class RegistryLink:
    def __init__(
        self,
        client: RegistryClient,
        registration: RegisterRequest,
        members: Members,
        *,
        heartbeat_interval: float,
        on_change: Callable[[], None] = lambda: None,
        backoff: Backoff | None = None,
    ) -> None:
        self._client = client
        self._registration = registration
        self._members = members
        self._own_interval = heartbeat_interval
        self._on_change = on_change
        self._backoff = backoff or Backoff(base=0.5, cap=30.0)
        self.registered = False
        self.error: str | None = "not registered yet"
        self.registered_since: float | None = None
        self._session = trio.CancelScope()

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
                lease = await self._client.register(self._registration)
                interval = min(lease.heartbeat_interval, self._own_interval)
                self._set_registered()
                await self._refresh_members()
                while True:
                    await trio.sleep(interval)
                    lease = await self._client.heartbeat(self._registration.id)
                    interval = min(lease.heartbeat_interval, self._own_interval)
                    self._set_registered()
                    await self._refresh_members()
            except UnknownMember:
                # The registry restarted or our lease ran out: register again at once.
                log.info("the registry forgot us; registering again")
                self._set_unregistered("the registry forgot this member; registering again")
            except RegistryError as exc:
                reason = _short_reason(exc)
                if self.registered or self.error != f"not registered: {reason}":
                    log.warning("not registered: %s", exc)
                self._set_unregistered(f"not registered: {reason}")
                await trio.sleep(self._backoff.next_delay())

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

    async def _refresh_members(self) -> None:
        try:
            members = await self._client.clients()
        except RegistryUnavailable as exc:
            # Keep the last list: a registry hiccup must not cut off transfers.
            log.warning("could not refresh the member list: %s", exc)
            return
        before = {m.id for m in self._members.others()}
        if self._members.update(members):
            after = {m.id for m in self._members.others()}
            for member in self._members.others():
                if member.id not in before:
                    log.info("member %s (%s) joined", short_id(member.id), member.name)
            for gone in before - after:
                log.info("member %s left", short_id(gone))
            self._on_change()

    async def leave(self) -> None:
        """Say goodbye, briefly: shutdown must not hang on an unreachable registry."""
        if not self.registered:
            return
        # Shielded, since shutdown is usually a cancellation; bounded by its own deadline.
        with trio.CancelScope(deadline=trio.current_time() + LEAVE_DEADLINE, shield=True):
            try:
                await self._client.leave(self._registration.id)
                log.info("left the registry")
            except RegistryError as exc:
                log.warning("could not leave the registry: %s", exc)
        self.registered = False


def _short_reason(exc: RegistryError) -> str:
    if isinstance(exc, RegistryUnavailable) and exc.failures:
        return exc.failures[-1] if len(exc.failures) == 1 else "; ".join(exc.failures)
    return str(exc)
