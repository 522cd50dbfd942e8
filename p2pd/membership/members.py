"""The other members as last listed by the registry: admission and PEER lookup.

No I/O: the registry link feeds it, the peer server and the control socket read it.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from p2pcommon.boundary import failure_boundary
from p2pcommon.identity import short_id
from p2pcommon.models import Member

log = logging.getLogger("p2pd.members")

#: One set for every kept record's ``__pydantic_fields_set__``: pydantic gives
#: each instance its own (712 bytes, a third of a member's memory at 10 000
#: members).  Members are never modified, so no one adds to it.
_EVERY_FIELD = frozenset(Member.model_fields)


def _compact(member: Member) -> Member:
    object.__setattr__(member, "__pydantic_fields_set__", _EVERY_FIELD)
    return member


#: Told of every change: (members that joined or changed, members that left).
#: A member whose certificate changed is in both, its old record among those left.
MembershipListener = Callable[[Sequence[Member], Sequence[Member]], None]


class PeerLookupError(Exception):
    """PEER names no member, or more than one; ``candidates`` lists the latter."""

    def __init__(self, message: str, candidates: list[Member] | None = None) -> None:
        super().__init__(message)
        self.candidates = candidates or []


@dataclass
class Members:
    own_id: str
    _by_id: dict[str, Member]
    generation: int = 0
    _listeners: list[MembershipListener] = field(default_factory=list)

    def add_listener(self, listener: MembershipListener) -> None:
        self._listeners.append(listener)

    @classmethod
    def empty(cls, own_id: str) -> Members:
        return cls(own_id, {})

    def update(self, members: Iterable[Member]) -> bool:
        """Replace the list (without ourselves); True if who is a member changed."""
        fresh = {m.id: _compact(m) for m in members if m.id != self.own_id}
        old = self._by_id
        changed = fresh.keys() != old.keys()
        joined = [m for i, m in fresh.items() if i not in old or old[i].cert != m.cert]
        left = [m for i, m in old.items() if i not in fresh or fresh[i].cert != m.cert]
        self._by_id = fresh
        return self._changed(changed, joined, left)

    def apply(self, joined: Iterable[Member], left: Iterable[str]) -> bool:
        """Apply a delta: members that joined or changed, ids that left (unknown ones
        are ignored).  Costs O(changes); True if who is a member changed."""
        by_id = self._by_id
        changed = False
        came: list[Member] = []
        went: list[Member] = []
        for member in joined:
            if member.id == self.own_id:
                continue
            old = by_id.get(member.id)
            by_id[member.id] = _compact(member)
            if old is None:
                changed = True
                came.append(member)
            elif old.cert != member.cert:
                came.append(member)
                went.append(old)
        for member_id in left:
            gone = by_id.pop(member_id, None)
            if gone is not None:
                changed = True
                went.append(gone)
        return self._changed(changed, came, went)

    def _changed(self, changed: bool, joined: list[Member], left: list[Member]) -> bool:
        if changed:
            self.generation += 1
        if joined or left:
            for listener in self._listeners:
                # One listener's fault must not keep the change from the others.
                with failure_boundary("membership listener", "applying a membership change", log):
                    listener(joined, left)
        return changed

    def count(self) -> int:
        """How many other members, without sorting them as ``others()`` does."""
        return len(self._by_id)

    def others(self) -> list[Member]:
        """Sorted for people; O(N log N), so not for paths that run per change or request."""
        return sorted(self._by_id.values(), key=lambda m: (m.name, m.id))

    def unordered(self) -> list[Member]:
        return list(self._by_id.values())

    def is_member(self, peer_id: str | None) -> bool:
        return peer_id is not None and peer_id in self._by_id

    def get(self, peer_id: str) -> Member | None:
        return self._by_id.get(peer_id)

    def resolve(self, peer: str, own_name: str | None = None) -> Member:
        """A member by full id, name or id prefix; PeerLookupError if none or several.

        An exact full id wins (no name can take it: ids are what members
        authenticate as).  Otherwise names and id prefixes count together: a
        member may name itself like another's short id, and must not get that
        member's ``p2pctl ls``/``fetch`` silently; both are then candidates.
        Where nothing matches, the error says what PEER may have meant: this
        daemon itself (its id or ``own_name``), or members named alike.
        """
        if peer in self._by_id:
            return self._by_id[peer]
        prefix = peer.lower()
        matches = sorted(
            (
                m
                for m in self._by_id.values()
                if m.name == peer or (prefix and m.id.startswith(prefix))
            ),
            key=lambda m: m.id,
        )
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise PeerLookupError(self._no_match(peer, own_name))
        listed = ", ".join(f"{m.name} ({short_id(m.id)})" for m in matches)
        raise PeerLookupError(
            f"{peer!r} matches {len(matches)} members: {listed}; give more of the id",
            matches,
        )

    def _no_match(self, peer: str, own_name: str | None) -> str:
        """Why PEER names no member, with what it may have meant."""
        own = bool(peer) and self.own_id.startswith(peer.lower())
        if own or (own_name is not None and peer.casefold() == own_name.casefold()):
            return f"{peer!r} is this daemon itself: `p2pctl shared` lists what it shares"
        alike = suggestions(peer, sorted({m.name for m in self._by_id.values()}))
        if alike:
            return f"no member named or prefixed {peer!r}: did you mean {' or '.join(alike)}?"
        return f"no member named or prefixed {peer!r}; `p2pctl peers` lists who is online"


#: Names suggested at most for a PEER that names no member.
MAX_SUGGESTIONS = 3


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
