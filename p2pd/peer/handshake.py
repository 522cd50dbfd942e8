"""Who may start a TLS handshake with the peer server, and with which context.

Before the handshake the client's first record is peeked at for its SNI
(p2pd.tls.peek): a foreign (self-signed) member names itself by its id, which
is looked up (p2pd.membership.directory) so that its handshake gets a context
that also trusts its one certificate (p2pd.tls.contexts.ServerContexts). Names
that are no id cost nothing; lookups of names not kept are limited per client
address and in all, so that a flood of made-up ids spends neither the
registry's patience nor the event loop. One deadline covers the peek, the
lookup and the handshake (docs/protocol.md §1).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections import Counter

import trio

from p2pcommon.http.accepting import peer_host
from p2pcommon.http.connections import address_key
from p2pd.membership.directory import Directory, LookupUnavailable, is_peer_id
from p2pd.peer.buckets import KeyedBuckets
from p2pd.peer.ratelimit import Allowance
from p2pd.tls.clienthello import ClientHelloError
from p2pd.tls.contexts import PeerMismatch, ServerContexts, presented_id, refuse_handshake
from p2pd.tls.peek import peek_server_name

log = logging.getLogger("p2pd.server")

HANDSHAKE_TIMEOUT = 10.0
#: Seconds the lookup of a ClientHello's SNI may take; then the default context.
SNI_LOOKUP_DEADLINE = 3.0
#: Lookups of SNI names not kept, a second and at once (past them: the default context).
SNI_LOOKUP_RATE = 20.0
SNI_LOOKUP_BURST = 40
#: The part of them one client address (an IPv4 address, an IPv6 /64) may spend: a
#: flood from one place leaves the rest to the others.
SNI_LOOKUP_RATE_PER_ADDRESS = 5.0


class Handshakes:
    def __init__(
        self, directory: Directory, contexts: ServerContexts, refused: Counter[str]
    ) -> None:
        self._directory = directory
        self._contexts = contexts
        #: Refusals by reason, shared with the server's (for metrics).
        self._refused = refused
        self._everyone = Allowance(SNI_LOOKUP_RATE, SNI_LOOKUP_BURST)
        self._by_address = KeyedBuckets(SNI_LOOKUP_RATE_PER_ADDRESS, SNI_LOOKUP_BURST)

    async def admit(self, stream: trio.abc.Stream) -> tuple[trio.abc.Stream, str | None] | None:
        # One deadline for the ClientHello's peek, the lookup and the handshake.
        with trio.move_on_after(HANDSHAKE_TIMEOUT) as deadline:
            context = await self._context_for(stream)
        if deadline.cancelled_caught:
            log.info("refused a TLS handshake: no ClientHello within %g s", HANDSHAKE_TIMEOUT)
            self._refused["handshake"] += 1
            await trio.aclose_forcefully(stream)
            return None
        tls = trio.SSLStream(stream, context, server_side=True)
        try:
            with trio.fail_at(deadline.deadline):
                await tls.do_handshake()
            peer_id = presented_id(tls)
        except (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            trio.TooSlowError,
            PeerMismatch,
        ) as exc:
            log.info("refused a TLS handshake: %s", exc.__cause__ or exc or "too slow")
            self._refused["handshake"] += 1
            if isinstance(exc.__cause__, ssl.SSLError):
                # OpenSSL wrote an alert saying why (no certificate, unknown
                # CA, protocol version): send it rather than a bare close.
                await refuse_handshake(tls)
            else:
                await trio.aclose_forcefully(tls)
            return None
        return tls, peer_id

    async def _context_for(self, stream: trio.abc.Stream) -> ssl.SSLContext:
        """The default context, or a foreign member's: the one its SNI (its id) names."""
        try:
            name = await peek_server_name(stream)
        except ClientHelloError:
            # Not TLS as we read it: the default context's handshake refuses it with an alert.
            return self._contexts.default
        if name is None or not is_peer_id(name):
            return self._contexts.default  # no member's name: nothing to look up
        if not self._directory.knows(name) and not self._may_look_up(stream):
            # A flood of made-up names must not spend our lookups at the registry
            # (it limits them per address), which admission needs.
            self._refused["sni lookups limited"] += 1
            return self._contexts.default
        member = None
        # A slow registry costs a foreign member its handshake, not everyone theirs.
        with trio.move_on_after(SNI_LOOKUP_DEADLINE), contextlib.suppress(LookupUnavailable):
            member = await self._directory.get(name)
        return await self._contexts.for_member(member)

    def _may_look_up(self, stream: trio.abc.Stream) -> bool:
        """Whether this client may have an SNI name looked up now: its address's part
        first (so that a flood from one place spends only that), then everyone's."""
        now = trio.current_time()
        try:
            address = address_key(peer_host(stream))
        except OSError:
            return False  # gone already: its handshake fails anyway
        return self._by_address.admit(address, now) == 0.0 and self._everyone.allow(now)
