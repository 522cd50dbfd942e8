"""The other members, looked up at the registry when needed: never mirrored.

``get(id)`` answers admission (every request to the peer server) and the
downloader; ``resolve(text)`` answers a PEER typed by a person (``p2pctl
ls``/``fetch``); ``pages()`` walks every member in pages for ``p2pctl
peers`` and anyone else who must ask many members; ``sample(n)`` gives
members from a random point of the id space (alternate sources).

What costs what: an answer is kept at most one heartbeat interval (the
registry's advised one, or our own ``heartbeat_interval`` if shorter), so a
member that left is refused within one interval; an unknown id is kept as unknown at most
``NEGATIVE_TTL`` seconds, so a member that just joined is seen at once.
Lookups of one id at once are one request; at most ``MAX_IN_FLIGHT``
requests are out at a time and ``MAX_ENTRIES`` answers are kept (least
recently used go first), so neither a flood of distinct ids nor a large
network grows memory.  When no registry answers, an answer kept from
earlier is used however old: a registry outage must not cut off members
that were admitted a moment ago.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import random
import re
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Protocol

import trio

from p2pcommon.identity import short_id
from p2pcommon.models import MAX_PAGE, PEER_ID_PATTERN, Member
from p2pcommon.registry_client import RegistryError, RegistryRefused

log = logging.getLogger("p2pd.members")

#: Answers kept (by id, least recently used first out): ~2 KiB each with a certificate.
MAX_ENTRIES = 4096
#: Registry requests of this directory out at once.
MAX_IN_FLIGHT = 32
#: Seconds an id the registry does not know stays unknown here at most.
NEGATIVE_TTL = 2.0
#: PEER texts whose resolution is kept.
MAX_RESOLUTIONS = 256
#: Names kept for "did you mean" suggestions (from lookups and pages).
MAX_KNOWN_NAMES = 4096
#: Names suggested at most for a PEER that names no member.
MAX_SUGGESTIONS = 3
#: What the registry resolves: 1 to 64 printable characters (docs/protocol.md §3.4).
MAX_PEER_TEXT = 64
_PEER_ID = re.compile(PEER_ID_PATTERN)


def is_peer_id(text: str) -> bool:
    """Whether ``text`` has the form of a peer id (52 characters of base32, lowercase)."""
    return _PEER_ID.fullmatch(text) is not None


_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


class MemberSource(Protocol):
    """Where members are looked up: p2pcommon.registry_client.RegistryClient."""

    async def member(self, member_id: str) -> Member | None: ...

    async def resolve(self, text: str) -> tuple[list[Member], bool]: ...

    async def members_page(
        self, after: str | None = None, limit: int = 500, *, certs: bool = True
    ) -> tuple[list[Member], str | None]: ...


class LookupUnavailable(Exception):
    """No registry answered a lookup and nothing was kept from earlier."""


class PeerLookupError(Exception):
    """PEER names no member, or more than one; ``candidates`` lists the latter."""

    def __init__(self, message: str, candidates: list[Member] | None = None) -> None:
        super().__init__(message)
        self.candidates = candidates or []


@dataclass
class _Pending:
    """One lookup under way; others asking the same wait for it."""

    done: trio.Event = field(default_factory=trio.Event)
    answered: bool = False


class Directory:
    def __init__(
        self,
        own_id: str,
        source: MemberSource,
        *,
        interval: float,
        max_entries: int = MAX_ENTRIES,
        max_in_flight: int = MAX_IN_FLIGHT,
        negative_ttl: float = NEGATIVE_TTL,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.own_id = own_id
        self._source = source
        self._own_interval = interval
        #: The registry's advised heartbeat interval (None until it advised one).
        self.advised_interval: float | None = None
        #: How many members the registry counted at our last register or heartbeat.
        self.registry_count: int | None = None
        self._max_entries = max_entries
        self._negative_ttl = negative_ttl
        self._clock = clock
        self._limiter = trio.CapacityLimiter(max_in_flight)
        #: id -> (the member or None for unknown, until when the answer holds).
        self._entries: OrderedDict[str, tuple[Member | None, float]] = OrderedDict()
        self._pending: dict[str, _Pending] = {}
        self._resolutions: OrderedDict[str, tuple[list[Member], bool, float]] = OrderedDict()
        self._names: OrderedDict[str, None] = OrderedDict()
        #: Registry requests made (lookups, resolutions, pages): for tests and the bench.
        self.requests = 0

    # -- the pace, from the registry link ------------------------------------

    @property
    def interval(self) -> float:
        """How long an answer holds: the advised heartbeat interval, or our own
        ``heartbeat_interval`` when that is shorter (a tighter refusal delay, for more
        lookups) or nothing was advised yet."""
        if self.advised_interval is None:
            return self._own_interval
        return min(self.advised_interval, self._own_interval)

    def set_own_interval(self, seconds: float) -> None:
        self._own_interval = seconds

    def advise(self, interval: float, members: int | None) -> None:
        """What a register's or heartbeat's answer said (p2pd.membership.link)."""
        self.advised_interval = interval
        if members is not None:
            self.registry_count = members

    @property
    def peers(self) -> int:
        """Other members, as the registry last counted them (ourselves not included)."""
        return max((self.registry_count or 0) - 1, 0)

    # -- by id ---------------------------------------------------------------

    async def get(self, member_id: str) -> Member | None:
        """The live member ``member_id`` or None (also for ourselves and for a string
        that is no id); LookupUnavailable if no registry answers and none was kept."""
        if member_id == self.own_id or _PEER_ID.fullmatch(member_id) is None:
            return None
        while True:
            kept = self._entries.get(member_id)
            if kept is not None and kept[1] > self._clock():
                self._entries.move_to_end(member_id)
                return kept[0]
            pending = self._pending.get(member_id)
            if pending is None:
                return await self._look_up(member_id)
            await pending.done.wait()
            # Answered: the loop finds it kept.  Not (failed or cancelled): ask again.
            if not pending.answered:
                return await self._look_up(member_id)

    def knows(self, member_id: str) -> bool:
        """Whether an answer about ``member_id`` is kept and fresh: ``get`` asks no one."""
        kept = self._entries.get(member_id)
        return kept is not None and kept[1] > self._clock()

    async def is_member(self, member_id: str | None) -> bool:
        return member_id is not None and await self.get(member_id) is not None

    async def _look_up(self, member_id: str) -> Member | None:
        pending = self._pending[member_id] = _Pending()
        try:
            async with self._limiter:
                self.requests += 1
                member = await self._source.member(member_id)
            self._keep(member_id, member)
            pending.answered = True
            return member
        except RegistryError as exc:
            kept = self._entries.get(member_id)
            if kept is not None:
                log.info("no registry answers (%s): member %s as known earlier", exc, member_id)
                return kept[0]
            raise LookupUnavailable(f"cannot look member {short_id(member_id)} up: {exc}") from exc
        finally:
            del self._pending[member_id]
            pending.done.set()

    def _keep(self, member_id: str, member: Member | None) -> None:
        ttl = self.interval if member is not None else min(self._negative_ttl, self.interval)
        self._entries[member_id] = (member, self._clock() + ttl)
        self._entries.move_to_end(member_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        if member is not None:
            self._know_name(member.name)

    def _know_name(self, name: str) -> None:
        self._names[name] = None
        self._names.move_to_end(name)
        while len(self._names) > MAX_KNOWN_NAMES:
            self._names.popitem(last=False)

    @property
    def kept(self) -> int:
        """Answers kept now (bounded by ``max_entries``)."""
        return len(self._entries)

    # -- PEER text -----------------------------------------------------------

    async def resolve(self, peer: str, own_name: str | None = None) -> Member:
        """The member a PEER text names: a full id, a name or an id prefix.

        PeerLookupError if none or several (then with the candidates), saying
        what PEER may have meant: this daemon itself, or members named alike.
        An exact full id wins (ids are what members authenticate as); otherwise
        names and id prefixes count together, so a member that names itself
        like another's short id is a candidate, never silently chosen.
        LookupUnavailable if no registry answers.
        """
        if not 1 <= len(peer) <= MAX_PEER_TEXT or not peer.isprintable():
            raise PeerLookupError(
                f"{peer[:80]!r} is no PEER: give a member's name, id or id prefix "
                f"(1 to {MAX_PEER_TEXT} printable characters)"
            )
        if _PEER_ID.fullmatch(peer) and peer != self.own_id:
            member = await self.get(peer)
            if member is not None:
                return member
        found, more = await self._resolution(peer)
        matches = [m for m in found if m.id != self.own_id]
        if len(matches) == 1 and not more:
            return matches[0]
        if not matches:
            raise PeerLookupError(await self._no_match(peer, own_name))
        listed = ", ".join(f"{m.name} ({short_id(m.id)})" for m in matches)
        count = f"more than {len(matches)}" if more else str(len(matches))
        raise PeerLookupError(
            f"{peer!r} matches {count} members: {listed}; give more of the id", matches
        )

    async def _resolution(self, text: str) -> tuple[list[Member], bool]:
        kept = self._resolutions.get(text)
        now = self._clock()
        if kept is not None and kept[2] > now:
            return kept[0], kept[1]
        try:
            async with self._limiter:
                self.requests += 1
                found, more = await self._source.resolve(text)
        except RegistryRefused as exc:
            raise PeerLookupError(f"the registry refused {text!r} as a PEER: {exc}") from None
        except RegistryError as exc:
            raise LookupUnavailable(f"cannot resolve {text!r}: {exc}") from exc
        self._resolutions[text] = (found, more, now + self.interval)
        while len(self._resolutions) > MAX_RESOLUTIONS:
            self._resolutions.popitem(last=False)
        for member in found:
            if member.id != self.own_id:
                self._keep(member.id, member)
        return found, more

    async def _no_match(self, peer: str, own_name: str | None) -> str:
        """Why PEER names no member, with what it may have meant."""
        own = self.own_id.startswith(peer.lower())
        if own or (own_name is not None and peer.casefold() == own_name.casefold()):
            return f"{peer!r} is this daemon itself: `p2pctl shared` lists what it shares"
        names = set(self._names)
        lowered = peer.lower()
        if lowered != peer:
            # "Bob" for "bob": the registry matches names exactly.
            found, _ = await self._resolution(lowered)
            names.update(m.name for m in found if m.id != self.own_id)
        alike = suggestions(peer, sorted(names))
        if alike:
            return f"no member named or prefixed {peer!r}: did you mean {' or '.join(alike)}?"
        return f"no member named or prefixed {peer!r}; `p2pctl peers` lists who is online"

    # -- many members --------------------------------------------------------

    async def pages(
        self,
        pattern: str | None = None,
        *,
        certs: bool = False,
        after: str | None = None,
        limit: int = MAX_PAGE,
    ) -> AsyncGenerator[list[Member], None]:
        """Every other member, a registry page at a time, sorted by id.

        ``pattern`` keeps those whose name or id matches (``member_matches``);
        a page with none left is skipped, not yielded empty.  ``certs`` False
        leaves certificates out (a fifth of the bytes), so such records cannot
        be connected to: ``get`` their id first.  ``after`` starts after that
        id.  LookupUnavailable if a registry stops answering midway.
        """
        while True:
            try:
                async with self._limiter:
                    self.requests += 1
                    found, following = await self._source.members_page(after, limit, certs=certs)
            except RegistryError as exc:
                raise LookupUnavailable(f"cannot list the members: {exc}") from exc
            kept = [
                m for m in found if m.id != self.own_id and member_matches(pattern, m.id, m.name)
            ]
            for member in kept:
                if certs:
                    self._keep(member.id, member)
                else:
                    self._know_name(member.name)
            if kept:
                yield kept
            if following is None:
                return
            after = following

    async def sample(self, count: int) -> list[Member]:
        """Up to ``count`` other members (with certificates) from a random point of the
        id space, wrapping around to the start; LookupUnavailable if no registry answers."""
        start = "".join(random.choice(_BASE32) for _ in range(8))
        chosen: dict[str, Member] = {}
        limit = min(count + 1, MAX_PAGE)
        for after in (start, None):
            async with aclosing(self.pages(certs=True, after=after, limit=limit)) as pages:
                async for page in pages:
                    for member in page:
                        chosen.setdefault(member.id, member)
                    if len(chosen) >= count:
                        break
            if len(chosen) >= count:
                break
        return list(chosen.values())[:count]


def member_matches(pattern: str | None, member_id: str, name: str) -> bool:
    """Whether ``pattern`` matches a name or an id: a glob (case-insensitive) when it
    has ``*?[``, else a case-insensitive substring; None matches everyone."""
    if not pattern:
        return True
    folded = pattern.casefold()
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name.casefold(), folded) or fnmatch.fnmatchcase(
            member_id, folded
        )
    return folded in name.casefold() or folded in member_id


def suggestions(peer: str, names: Sequence[str]) -> list[str]:
    """Names ``peer`` may have meant: the same but for case first, then close spellings."""
    folded = peer.casefold()
    same = [name for name in names if name.casefold() == folded]
    by_folded: dict[str, list[str]] = {}
    for name in names:
        by_folded.setdefault(name.casefold(), []).append(name)
    # Typos (bbo, bob2) in any case; difflib's default cutoff 0.6 keeps strangers out.
    close = difflib.get_close_matches(folded, list(by_folded), n=MAX_SUGGESTIONS, cutoff=0.6)
    alike = same + [name for key in close for name in by_folded[key] if name not in same]
    return alike[:MAX_SUGGESTIONS]
