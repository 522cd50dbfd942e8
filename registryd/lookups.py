"""The registry's read routes (docs/protocol.md §3.4): one member, a PEER text, pages, the list.

Peers look members up when they need them instead of mirroring everyone: a
lookup by id, a resolution of what a user typed (a name, a full id, an id
prefix), pages sorted by id, each of a bounded cost.  ``GET /clients`` keeps
its shape for older clients and tools, from a snapshot at most a second old.

The signature covers the path, not the query: the answer of a page echoes
the query it answered, and the client checks the echo.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import parse_qsl, unquote

import trio

from p2pcommon.models import MAX_NAME_LENGTH, MAX_PAGE, PEER_ID_PATTERN
from registryd.answers import Answer, Call, error
from registryd.metrics import RegistryMetrics
from registryd.store import Store
from registryd.table import RESOLVE_LIMIT, Entry

MEMBER_PREFIX = "/members/"
RESOLVE_PREFIX = "/resolve/"
#: Members in one page unless the client asks for another number (at most MAX_PAGE).
PAGE_DEFAULT = 500
#: Seconds a full member list (``GET /clients``) may be reused.
SNAPSHOT_MAX_AGE = 1.0

_PEER_ID = re.compile(PEER_ID_PATTERN)
#: What ``after`` may be: an id, a prefix of one, or nothing (from the start).
_AFTER = re.compile(r"[a-z2-7]{0,52}")
_ID_PREFIX = re.compile(r"[a-z2-7]{1,52}")
_LIMIT = re.compile(r"-?[0-9]+")
#: Digits of a limit read as a number; a longer one is clamped by its sign alone
#: (int() of thousands of digits costs, and Python refuses past 4 300).
_LIMIT_DIGITS = 9
_PAGE_QUERY = ("after", "limit", "certs")

Encode = Callable[[object], str]


def record(member: Entry, *, cert: bool = True) -> dict[str, object]:
    """A member as the routes answer it (``cert`` False: a page with ``certs=0``)."""
    answer: dict[str, object] = {
        "id": member.id,
        "name": member.name,
        "addresses": list(member.addresses),
    }
    if cert:
        answer["cert"] = member.cert
    answer["last_seen"] = round(float(member.last_seen), 3)
    return answer


class Lookups:
    def __init__(self, store: Store, metrics: RegistryMetrics, encode: Encode) -> None:
        self._store = store
        self._metrics = metrics
        self._encode = encode
        self._found = metrics.lookups.labels("found")
        self._unknown = metrics.lookups.labels("unknown")
        #: (when, the encoded ``GET /clients`` answer) of the last full list.
        self._snapshot: tuple[float, bytes] | None = None
        #: One build at a time: those who ask meanwhile take its snapshot.
        self._building = trio.Lock()

    async def member(self, call: Call) -> Answer:
        member_id = call.request.path[len(MEMBER_PREFIX) :]
        if _PEER_ID.fullmatch(member_id) is None:
            return error(
                400,
                "bad request",
                "the path must be /members/<id>, the id 52 characters of a-z and 2-7 "
                "(the lowercase base32 SHA-256 of the member's certificate)",
            )
        entry = await self._store.get(member_id, call.now)
        if entry is None:
            self._unknown.inc()
            return error(
                404,
                "unknown member",
                "no member has this id now: it left, its lease ran out, or it never registered",
            )
        self._found.inc()
        return Answer(200, record(entry))

    async def resolve(self, call: Call) -> Answer:
        raw = call.request.path[len(RESOLVE_PREFIX) :]
        try:
            text = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            text = ""
        if not 0 < len(text) <= MAX_NAME_LENGTH or not text.isprintable():
            return error(
                400,
                "bad request",
                f"the path must be /resolve/<text>, the text 1 to {MAX_NAME_LENGTH} printable "
                "characters, percent-encoded UTF-8 (a name, a full id or an id prefix)",
            )
        prefix = text.lower()
        found, more = await self._store.resolve(
            text, prefix if _ID_PREFIX.fullmatch(prefix) else None, call.now, limit=RESOLVE_LIMIT
        )
        self._metrics.resolves.inc()
        return Answer(200, {"query": text, "members": [record(m) for m in found], "more": more})

    async def page(self, call: Call) -> Answer:
        query = _page_query(call.request.target)
        if isinstance(query, Answer):
            return query
        after, asked_limit, certs = query
        limit = PAGE_DEFAULT if asked_limit is None else min(MAX_PAGE, max(1, asked_limit))
        found, following = await self._store.page(after or "", call.now, limit=limit, certs=certs)
        self._metrics.pages.inc()
        return Answer(
            200,
            {
                "members": [record(m, cert=certs) for m in found],
                "next": following,
                # Echoed: the signature covers the path, not the query.
                "after": after,
                "limit": limit,
                "certs": int(certs),
            },
        )

    async def clients(self, call: Call) -> Answer:
        """Every member, from a snapshot at most SNAPSHOT_MAX_AGE old: encoding every
        member is the costliest answer, and asking for it again is cheap."""
        now = call.now
        if (fresh := self._fresh_snapshot(now)) is not None:
            return Answer(200, None, fresh)
        async with self._building:
            if (fresh := self._fresh_snapshot(now)) is not None:
                return Answer(200, None, fresh)  # built while this one waited
            listed = [record(m) for m in await self._store.members(now)]
            body = self._encode({"clients": listed}).encode()
            self._snapshot = (now, body)
        return Answer(200, None, body)

    def _fresh_snapshot(self, now: float) -> bytes | None:
        snapshot = self._snapshot
        # A snapshot newer than ``now`` (built while this request waited) is fresh too.
        if snapshot is not None and now - snapshot[0] < SNAPSHOT_MAX_AGE:
            return snapshot[1]
        return None


def _page_query(target: str) -> tuple[str | None, int | None, bool] | Answer:
    """(after, limit, certs) of ``GET /members?…``; 400 naming the parameter at fault."""
    _, _, query = target.partition("?")
    values: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in _PAGE_QUERY:
            if name in values:
                return error(400, "bad request", f"query {name!r} is given twice")
            values[name] = value
    after = values.get("after")
    if after is not None and _AFTER.fullmatch(after) is None:
        return error(
            400, "bad request", "query 'after': a member id (or a prefix of one): a-z and 2-7"
        )
    limit = values.get("limit")
    if limit is not None and _LIMIT.fullmatch(limit) is None:
        return error(
            400, "bad request", f"query 'limit': a whole number (at most {MAX_PAGE} are used)"
        )
    certs = values.get("certs", "1")
    if certs not in ("0", "1"):
        return error(400, "bad request", "query 'certs': 1 (with certificates) or 0")
    if limit is None:
        return after, None, certs == "1"
    if len(limit.lstrip("-")) > _LIMIT_DIGITS:
        return after, -1 if limit.startswith("-") else MAX_PAGE + 1, certs == "1"
    return after, int(limit), certs == "1"
