"""The Redis store: several registryd instances share one view of the members.

Layout under the key prefix ``p2p:`` (docs/protocol.md §3.5):

- ``m:<id>``: a member, a hash with name, cert, addresses (JSON), seen (its
  last register or heartbeat), exp (when its lease runs out) and lease (the
  SHA-256, in hex, of its last register's lease token).  Redis expires the key
  itself a while after ``exp`` (``KEY_GRACE``): the cleanup below normally
  removes it first, and needs its name to do so;
- ``ids``: every member id, in a sorted set whose scores are all 0, so that
  pages and id prefixes are ZRANGEBYLEX ranges;
- ``names``: ``<name>\\0<id>`` likewise, so that the members of a name come as
  one range, sorted by id;
- ``exp``: id -> exp, so that the cleanup finds the members whose lease ran out
  with ZRANGEBYSCORE, a bounded number at a time: never a sweep over everyone;
- ``procs``: the registry processes alive on this Redis, each refreshing its own
  entry about once a second (the pace divides the heartbeats among them);
- ``nonce:<nonce>``: set with NX and an absolute expiry, which makes replay
  detection atomic across instances.

Each operation is one Lua script (registryd.redis_scripts) or one command, so it
is atomic however many instances run; a lookup is one HGETALL.  Index entries
of members whose hash is gone are dropped when read.  redis-py is synchronous
here (its asyncio client does not run under trio); calls go through
``trio.to_thread`` with a bounded number of threads.

A dead or silent Redis must cost a request a few seconds at most: connect and
read timeouts are short, redis-py does not retry on its own (the registry's
health probe does, see ``registryd.watched_store``), and every failure of a
call, whatever redis-py or the socket raised, comes out as ``StoreError``.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

import redis
import trio
from redis.backoff import NoBackoff
from redis.retry import Retry

from registryd import redis_scripts
from registryd.records import BadRecord, entry_from_fields, skipped
from registryd.redis_connect import connect, describe
from registryd.store import NewMembersLimited, Registered, StoreError, WrongLease
from registryd.table import RESOLVE_LIMIT, Entry

PREFIX = "p2p:"
MEMBER = PREFIX + "m:"
IDS = PREFIX + "ids"
NAMES = PREFIX + "names"
EXPIRY = PREFIX + "exp"
PROCESSES = PREFIX + "procs"

#: Seconds a member's key outlives its lease, so that the cleanup still finds its name.
KEY_GRACE = 600.0
#: Members the cleanup drops in one script at most, and scripts in one round at most.
EXPIRE_BATCH = 1000
EXPIRE_ROUNDS = 10
#: Index entries one page or resolution reads at most beyond what it answers.
SCAN_SLACK = 1000
#: Seconds since its last refresh a registry process still counts as alive.
PROCESS_ALIVE = 5

T = TypeVar("T")

#: Seconds to open a connection, and to wait for one answer: a healthy Redis
#: answers in milliseconds, so this only bounds how long a dead one holds a request.
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 2.0

#: What a failing Redis raises: redis-py's own errors, and socket or TLS errors
#: (OSError) that some paths, e.g. loading a rediss:// CA file, let through.
_FAILURES = (redis.RedisError, OSError)
_RECORD_FIELDS = ("exp", "seen", "name", "addresses", "cert")


def member_key(member_id: str) -> str:
    return MEMBER + member_id


class RedisStore:
    def __init__(self, url: str, *, max_threads: int = 8) -> None:
        self._name = describe(url)
        #: This process on the Redis, in ``procs``.
        self._process = secrets.token_hex(8)
        try:
            self._redis = connect(
                url,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=READ_TIMEOUT,
                # No retries inside a request: one attempt, then 503 and the probe's turn.
                retry=Retry(NoBackoff(), 0),
            )
        except _FAILURES as exc:
            raise StoreError(f"redis: {_one_line(exc)}") from exc
        script = self._redis.register_script
        self._register = script(redis_scripts.REGISTER)
        self._renew = script(redis_scripts.RENEW)
        self._leave = script(redis_scripts.LEAVE)
        self._expire = script(redis_scripts.EXPIRE)
        self._page = script(redis_scripts.PAGE)
        self._resolve = script(redis_scripts.RESOLVE)
        self._processes = script(redis_scripts.PROCESSES)
        self._threads = trio.CapacityLimiter(max_threads)

    async def _run(self, call: Callable[[], T]) -> T:
        try:
            return await trio.to_thread.run_sync(call, limiter=self._threads)
        except _FAILURES as exc:
            raise StoreError(f"redis: {_one_line(exc)}") from exc

    async def _script(self, script: Any, keys: Sequence[str], args: Sequence[object]) -> Any:
        return await self._run(lambda: script(keys=list(keys), args=list(args)))

    async def register(
        self,
        id: str,
        name: str,
        cert: str,
        addresses: tuple[str, ...],
        now: float,
        *,
        ttl: float,
        lease_hash: str,
        allow_new: bool = True,
    ) -> Registered:
        args = [id, name, cert, json.dumps(list(addresses)), repr(now), repr(now + ttl)]
        args += [str(_key_lifetime(ttl)), lease_hash, "1" if allow_new else "0"]
        keys = (member_key(id), IDS, NAMES, EXPIRY)
        outcome, members = await self._script(self._register, keys, args)
        if int(outcome) < 0:
            raise NewMembersLimited(id)
        return Registered(int(outcome) == 1, int(members))

    async def renew(self, id: str, now: float, *, ttl: float, lease_hash: str) -> int | None:
        args = [id, repr(now), repr(now + ttl), _key_lifetime(ttl), lease_hash]
        members = await self._script(self._renew, (member_key(id), EXPIRY), args)
        if members is None:
            return None
        if int(members) < 0:
            raise WrongLease(id)
        return int(members)

    async def leave(self, id: str, now: float, *, lease_hash: str) -> bool:
        keys = (member_key(id), IDS, NAMES, EXPIRY)
        outcome = int(await self._script(self._leave, keys, [id, repr(now), lease_hash]))
        if outcome < 0:
            raise WrongLease(id)
        return outcome == 1

    async def expire(self, now: float) -> list[str]:
        gone: list[str] = []
        for _ in range(EXPIRE_ROUNDS):
            args = [repr(now), MEMBER, EXPIRE_BATCH]
            dropped: Any = await self._script(self._expire, (IDS, NAMES, EXPIRY), args)
            gone += [_text(member_id) for member_id in dropped]
            if len(dropped) < EXPIRE_BATCH:
                break
        return gone

    async def get(self, id: str, now: float) -> Entry | None:
        key = member_key(id)
        fields = cast(dict[str, str], await self._run(lambda: self._redis.hgetall(key)))
        exp = fields.get("exp")
        if exp is None or not _after(exp, now):
            return None
        found = self._entries([[id, *(fields.get(name) for name in _RECORD_FIELDS)]], certs=True)
        return found[0] if found else None

    async def resolve(
        self, name: str, prefix: str | None, now: float, *, limit: int = RESOLVE_LIMIT
    ) -> tuple[list[Entry], bool]:
        args = [name, prefix or "", repr(now), MEMBER, limit, limit + SCAN_SLACK]
        rows, more = await self._script(self._resolve, (IDS, NAMES), args)
        return self._entries(rows, certs=True), bool(int(more))

    async def page(
        self, after: str, now: float, *, limit: int, certs: bool
    ) -> tuple[list[Entry], str | None]:
        low = f"({after}" if after else "-"
        args = [low, limit, repr(now), MEMBER, "1" if certs else "0", limit + SCAN_SLACK]
        rows, following = await self._script(self._page, (IDS,), args)
        return self._entries(rows, certs=certs), _text(following) if following else None

    async def members(self, now: float) -> list[Entry]:
        def fetch() -> list[list[Any]]:
            ids = cast(list[str], self._redis.zrange(IDS, 0, -1))
            pipe = self._redis.pipeline(transaction=False)
            for member_id in ids:
                pipe.hmget(member_key(member_id), *_RECORD_FIELDS)
            return [
                [member_id, *fields]
                for member_id, fields in zip(ids, pipe.execute(), strict=True)
                if fields[0] is not None and _after(fields[0], now)
            ]

        return self._entries(await self._run(fetch), certs=True)

    def _entries(self, rows: Iterable[Sequence[Any]], *, certs: bool) -> list[Entry]:
        """Entries of raw [id, exp, seen, name, addresses, cert] rows; bad ones skipped."""
        entries = []
        for member_id, exp, seen, name, addresses, cert, *_ in rows:
            try:
                entries.append(
                    entry_from_fields(
                        _text(member_id),
                        _text(seen) if seen else None,
                        _text(name) if name else None,
                        # Asked for and missing: "", which the check refuses.
                        (_text(cert) if cert else "") if certs else None,
                        _text(addresses) if addresses else None,
                        _text(exp),
                    )
                )
            except (BadRecord, UnicodeDecodeError) as exc:
                skipped(_text(member_id, errors="replace"), str(exc), self._name)
        return entries

    async def count(self, now: float) -> int:
        return int(await self._run(lambda: self._redis.zcount(EXPIRY, f"({now!r}", "+inf")))

    async def processes(self, now: float) -> int:
        keys, args = (PROCESSES,), [self._process, PROCESS_ALIVE]
        return int(await self._script(self._processes, keys, args))

    async def remember_nonce(self, nonce: str, expires_at: float, now: float) -> bool:
        key = f"{PREFIX}nonce:{nonce}"
        ms = max(1, int((expires_at - now) * 1000))
        return bool(await self._run(lambda: self._redis.set(key, 1, nx=True, px=ms)))

    async def aclose(self) -> None:
        # Closing only drops pooled sockets; a dead Redis must not fail a shutdown.
        with contextlib.suppress(StoreError):
            # This process no longer takes a share of the heartbeats.
            await self._run(lambda: self._redis.zrem(PROCESSES, self._process))
        with contextlib.suppress(StoreError):
            await self._run(self._redis.close)

    async def ping(self) -> None:
        await self._run(self._redis.ping)


def _key_lifetime(ttl: float) -> int:
    """Milliseconds a member's key lives: its lease, and the grace after it."""
    return int((ttl + KEY_GRACE) * 1000)


def _after(exp: str, now: float) -> bool:
    try:
        return float(exp) > now
    except ValueError:
        return True  # not a number: left to the record's check, which says so


def _text(value: bytes | str, errors: str = "strict") -> str:
    return value.decode("utf-8", errors) if isinstance(value, bytes) else value


def _one_line(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ").strip()
    return text or type(exc).__name__
