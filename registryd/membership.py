"""The registry's membership actions: register, heartbeat, leave (docs/protocol.md §3).

A register must prove the member's key (the ``member`` signature, §2.4) and
may bring a new id only as fast as its source is allowed to (§3.2); it gets a
new lease token, of which the store keeps the SHA-256.  Heartbeat and leave
must show the token of the member's last register (§3.3).  Every lease answer
carries the pace (``registryd.pace``) for the members counted last, and the
count this answer's store call gave.
"""

from __future__ import annotations

import hashlib
import logging
import secrets

from p2pcommon.http.connections import address_key
from p2pcommon.http.events import error_response
from p2pcommon.identity import canonical_pem, peer_id_from_pem, short_id
from p2pcommon.logs import RepeatedLines
from p2pcommon.models import MemberRequest, RegisterRequest, join_host_port
from p2pcommon.signing.member_proof import (
    BAD_MEMBER_SIGNATURE,
    MemberProofError,
    check_member_signature,
)
from p2pcommon.signing.signer import AuthError
from registryd.answers import Answer, Call, Unsigned, error, parse
from registryd.guards import NewMemberLimiter
from registryd.metrics import RegistryMetrics
from registryd.pace import Pace
from registryd.store import NewMembersLimited, Registered, Store, WrongLease

log = logging.getLogger("registryd")

#: Bytes of entropy in a lease token: 128 bits, 22 base64url characters.
LEASE_BYTES = 16


def lease_hash(token: str) -> str:
    """What a store keeps of a lease token: its SHA-256, in hex."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


class Membership:
    """The actions that change who is a member.  A register whose member signature
    fails raises AuthError (the app answers 401 and counts it); one that may not
    bring a new id now raises Unsigned (429)."""

    def __init__(
        self,
        store: Store,
        metrics: RegistryMetrics,
        newcomers: NewMemberLimiter,
        pace: Pace,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._newcomers = newcomers
        self._pace = pace
        # A source turned away keeps trying: a few lines a minute say so.
        self._refusals = RepeatedLines(log, burst=5)

    async def register(self, call: Call) -> Answer:
        request = call.request
        parsed = parse(RegisterRequest, request.body)
        if isinstance(parsed, Answer):
            return parsed
        try:
            # Stored re-encoded: only the certificate itself reaches the members.
            cert = canonical_pem(parsed.cert)
            cert_id = peer_id_from_pem(cert)
        except ValueError as exc:
            return error(400, "bad certificate", f"field 'cert': {exc}")
        if cert_id != parsed.id:
            return error(
                400,
                "id mismatch",
                "field 'id' must be the lowercase unpadded base32 SHA-256 of the certificate's DER",
            )
        try:
            check_member_signature(
                call.member,
                member_id=parsed.id,
                cert_pem=cert,
                method=request.method,
                path=request.path,
                digest=(request.header(b"content-digest") or b"").decode("latin-1"),
                created=call.verified.created,
                nonce=call.verified.nonce,
            )
        except MemberProofError as exc:
            # A refusal of authentication, counted and limited as the others are.
            raise AuthError(BAD_MEMBER_SIGNATURE, str(exc), hint=str(exc)) from None
        addresses = parsed.addresses or [join_host_port(request.client_host, parsed.port)]
        token = secrets.token_urlsafe(LEASE_BYTES)
        ttl, interval = self._pace.lease()
        registered = await self._store_register(parsed, cert, tuple(addresses), token, call, ttl)
        self._pace.members = registered.members
        self._metrics.registrations.inc()
        if registered.new:
            log.info(
                "registered %s (%s) at %s", short_id(parsed.id), parsed.name, ", ".join(addresses)
            )
        lease = {"ttl": ttl, "heartbeat_interval": interval, "lease": token}
        return Answer(200, {**lease, "members": registered.members})

    async def _store_register(
        self,
        parsed: RegisterRequest,
        cert: str,
        addresses: tuple[str, ...],
        token: str,
        call: Call,
        ttl: float,
    ) -> Registered:
        """Register with a new lease; a new id only if its source may add one now (429)."""
        source, now = address_key(call.request.client_host), call.now
        # Taken before the store is asked, given back if the id was a member: no
        # other register from this source can take the same token meanwhile.
        took = self._newcomers.try_take(source, now)
        try:
            registered = await self._store.register(
                parsed.id,
                parsed.name,
                cert,
                addresses,
                now,
                ttl=ttl,
                lease_hash=lease_hash(token),
                allow_new=took,
            )
        except NewMembersLimited:
            self._metrics.new_members_limited.inc()
            retry = self._newcomers.retry_after(source, now)
            self._refusals.log(
                logging.INFO,
                "refused new members",
                "refused a new member from %s: too many new ids from its address",
                call.request.client_host,
            )
            raise Unsigned(
                error_response(
                    429,
                    "too many new members",
                    f"this address registered many new ids lately; retry in {retry} s "
                    "(members already registered are not limited)",
                    [("Retry-After", str(retry))],
                )
            ) from None
        except BaseException:
            if took:
                self._newcomers.give_back(source, now)
            raise
        if took and not registered.new:
            self._newcomers.give_back(source, now)
        return registered

    async def heartbeat(self, call: Call) -> Answer:
        parsed = parse(MemberRequest, call.request.body)
        if isinstance(parsed, Answer):
            return parsed
        ttl, interval = self._pace.lease()
        try:
            members = await self._store.renew(
                parsed.id, call.now, ttl=ttl, lease_hash=lease_hash(parsed.lease)
            )
        except WrongLease:
            return self._wrong_lease()
        if members is None:
            return error(404, "unknown member", "this id has no live lease: register again")
        self._pace.members = members
        self._metrics.heartbeats.inc()
        return Answer(200, {"ttl": ttl, "heartbeat_interval": interval, "members": members})

    async def leave(self, call: Call) -> Answer:
        parsed = parse(MemberRequest, call.request.body)
        if isinstance(parsed, Answer):
            return parsed
        try:
            left = await self._store.leave(parsed.id, call.now, lease_hash=lease_hash(parsed.lease))
        except WrongLease:
            return self._wrong_lease()
        if not left:
            return error(404, "unknown member", "this id is not registered")
        self._metrics.leaves.inc()
        log.info("%s left", short_id(parsed.id))
        return Answer(200, {"ok": True})

    def _wrong_lease(self) -> Answer:
        self._metrics.wrong_leases.inc()
        return error(
            403,
            "wrong lease",
            "this member holds another lease: only its last register's lease renews or "
            "ends it; a member that registered again since (with another registry, or "
            "another process with the same identity) registers again",
        )
