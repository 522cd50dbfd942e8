"""Other sources of a transfer's bytes: members listing the same sha256 and size."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import trio

from p2pcommon.boundary import failure_boundary
from p2pcommon.models import Member
from p2pd.fetch.model import Queued
from p2pd.membership.directory import Directory, LookupUnavailable
from p2pd.peer.client import PeerPool, PeerUnavailable

log = logging.getLogger("p2pd.downloads")  # its lines are the transfer's

#: Looking for other members with the same bytes: how many are asked (at
#: most), how many at once, and for how long in all.
MAX_ALTERNATES_ASKED = 32
ALTERNATES_AT_ONCE = 8
ALTERNATES_DEADLINE = 5.0


async def find_alternates(
    pool: PeerPool,
    directory: Directory,
    queued: Queued,
    known: Sequence[tuple[Member, str]] = (),
) -> list[tuple[Member, str]]:
    """Other members listing the same bytes, each with its own path for them.

    First those ``known`` to hold them (a search by sha256 found them), then
    the listings kept from earlier (no request: a kept listing that names
    the bytes makes a source, one that does not rules its member out, one of
    a member that left is skipped), then members without one, up to
    MAX_ALTERNATES_ASKED from one registry page at a random point of the id
    space, asked concurrently, a bounded number at a time, under one short
    deadline: a silent or hostile member costs seconds, not the transfer.
    """
    found = [(member, path) for member, path in known if member.id != queued.peer_id]
    known_ids = {queued.peer_id, *(member.id for member, _ in found)}
    with trio.move_on_after(ALTERNATES_DEADLINE):
        for member_id, listing in reversed(pool.cached_listings()):
            if member_id in known_ids:
                continue
            known_ids.add(member_id)
            if (path := listing.path_of(queued.sha256, queued.size)) is None:
                continue
            with contextlib.suppress(LookupUnavailable):
                if (member := await directory.get(member_id)) is not None:
                    found.append((member, path))
    try:
        with trio.fail_after(ALTERNATES_DEADLINE):
            sampled = await directory.sample(MAX_ALTERNATES_ASKED + len(known_ids))
    except (LookupUnavailable, trio.TooSlowError) as exc:
        log.info("transfer %s: no other members to ask: %s", queued.id, exc or "too slow")
        sampled = []
    others = [m for m in sampled if m.id not in known_ids][:MAX_ALTERNATES_ASKED]
    limiter = trio.CapacityLimiter(ALTERNATES_AT_ONCE)

    async def ask(member: Member) -> None:
        async with limiter:
            with failure_boundary("source lookup", f"asking {member.name}", log):
                try:
                    listing = await pool.listing(member)
                except PeerUnavailable as exc:
                    log.info("transfer %s: no source: %s", queued.id, exc)
                    return
                if (path := listing.path_of(queued.sha256, queued.size)) is not None:
                    found.append((member, path))

    with trio.move_on_after(ALTERNATES_DEADLINE):
        async with trio.open_nursery() as nursery:
            for member in others:
                nursery.start_soon(ask, member)
    return found
