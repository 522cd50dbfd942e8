"""Whom a transfer may take pieces from: the members listing its bytes.

Those whose kept listings name the same sha256 and size (no request), and
those the caller passed (a search found them); each one a current member (the
directory's answer, kept one interval) and none avoided for this content
(it sent a bad piece of it within the hour).  Transfers ask again before each
round, after a failed one, and every few seconds while pieces come, so that a
member that appears may join and one that left is dropped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from p2pcommon.models import Member
from p2pd.fetch.sources import find_alternates
from p2pd.fetch.swarming import Candidate
from p2pd.fetch.transfer import Transfer
from p2pd.membership.directory import Directory, LookupUnavailable
from p2pd.peer.client import PeerPool, PeerUnavailable


class Candidates:
    def __init__(
        self, pool: PeerPool, directory: Directory, avoided: Callable[[str, str], bool]
    ) -> None:
        self._pool = pool
        self._directory = directory
        #: (sha256, member id) -> whether that member lied about those bytes lately.
        self._avoided = avoided

    async def of(self, transfer: Transfer) -> list[Candidate]:
        """The transfer's candidates now, in the order found (kept listings first)."""
        queued = transfer.queued
        found: dict[str, Candidate] = {}
        for member_id, listing in self._pool.cached_listings():
            entry = listing.entry_of(queued.sha256, queued.size)
            if entry is not None and member_id not in found:
                member = await self._member(member_id)
                if member is not None:
                    found[member_id] = Candidate(member, entry.path, entry.root, entry.piece_size)
        for candidate in transfer.extra:
            if candidate.member.id not in found and await self._member(candidate.member.id):
                found[candidate.member.id] = candidate
        return [c for c in found.values() if not self._avoided(queued.sha256, c.member.id)]

    async def look_again(self, transfer: Transfer) -> list[Candidate]:
        """A many-source transfer is to be resumed (after a restart, say) and the
        listings that named its sources are not kept: ask the members again."""
        if (member := await self._member(transfer.queued.peer_id)) is not None:
            with contextlib.suppress(PeerUnavailable):
                await self._pool.listing(member)
        with contextlib.suppress(LookupUnavailable):
            await find_alternates(self._pool, self._directory, transfer.queued)
        return await self.of(transfer)

    async def _member(self, member_id: str) -> Member | None:
        """The current member ``member_id``, or None (unknown, or no registry answers)."""
        try:
            return await self._directory.get(member_id)
        except LookupUnavailable:
            return None
