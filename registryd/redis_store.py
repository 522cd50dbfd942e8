"""The Redis store: several registryd instances share one view of the members.

Layout under the key prefix ``p2p:``:

- ``members``: a sorted set, member id -> time of the last register/heartbeat;
- ``member:<id>``: a hash with name, cert and addresses (JSON), expiring with
  the lease so that nothing outlives a crash;
- ``nonce:<nonce>``: set with NX and an absolute expiry, which makes replay
  detection atomic across instances.

Each operation is one Lua script or one command, so it is atomic however
many instances run.  redis-py is synchronous here (its asyncio client does
not run under trio); calls go through ``trio.to_thread`` with a bounded
number of threads.

A dead or silent Redis must cost a request a few seconds at most: connect and
read timeouts are short, redis-py does not retry on its own (the registry's
health probe does, see ``registryd.watched_store``), and every failure of a
call, whatever redis-py or the socket raised, comes out as ``StoreError``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any, TypeVar, cast

import redis
import trio
from redis.backoff import NoBackoff
from redis.retry import Retry

from registryd.store import StoreError
from registryd.table import Entry

PREFIX = "p2p:"
MEMBERS = PREFIX + "members"

_REGISTER = """
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'name', ARGV[2], 'cert', ARGV[3], 'addresses', ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
if old and tonumber(old) + tonumber(ARGV[7]) > tonumber(ARGV[5]) then return 0 end
return 1
"""

_RENEW = """
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not old or tonumber(old) + tonumber(ARGV[3]) <= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"""

_EXPIRE = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, id in ipairs(gone) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('DEL', ARGV[2] .. id)
end
return gone
"""

T = TypeVar("T")

#: Seconds to open a connection, and to wait for one answer: a healthy Redis
#: answers in milliseconds, so this only bounds how long a dead one holds a request.
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 2.0

#: What a failing Redis raises: redis-py's own errors, and socket or TLS errors
#: (OSError) that some paths, e.g. loading a rediss:// CA file, let through.
_FAILURES = (redis.RedisError, OSError)


def _member_key(member_id: str) -> str:
    return f"{PREFIX}member:{member_id}"


class RedisStore:
    def __init__(self, url: str, ttl: float, *, max_threads: int = 8) -> None:
        self.ttl = ttl
        try:
            self._redis = redis.Redis.from_url(
                url,
                decode_responses=True,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=READ_TIMEOUT,
                # No retries inside a request: one attempt, then 503 and the probe's turn.
                retry=Retry(NoBackoff(), 0),
            )
        except _FAILURES as exc:
            raise StoreError(f"redis: {_one_line(exc)}") from exc
        self._register = self._redis.register_script(_REGISTER)
        self._renew = self._redis.register_script(_RENEW)
        self._expire = self._redis.register_script(_EXPIRE)
        self._threads = trio.CapacityLimiter(max_threads)

    async def _run(self, call: Callable[[], T]) -> T:
        try:
            return await trio.to_thread.run_sync(call, limiter=self._threads)
        except _FAILURES as exc:
            raise StoreError(f"redis: {_one_line(exc)}") from exc

    def _lease_ms(self) -> int:
        # The hash outlives the lease a little so that expire() still finds it.
        return int(self.ttl * 2000) + 1000

    async def register(
        self, id: str, name: str, cert: str, addresses: tuple[str, ...], now: float
    ) -> bool:
        args: list[str | float] = [
            id,
            name,
            cert,
            json.dumps(list(addresses)),
            now,
            self._lease_ms(),
            self.ttl,
        ]
        result = await self._run(lambda: self._register(keys=[MEMBERS, _member_key(id)], args=args))
        return bool(result)

    async def renew(self, id: str, now: float) -> bool:
        args: list[str | float] = [id, now, self.ttl, self._lease_ms()]
        result = await self._run(lambda: self._renew(keys=[MEMBERS, _member_key(id)], args=args))
        return bool(result)

    async def leave(self, id: str) -> bool:
        def leave() -> int:
            pipe = self._redis.pipeline()
            pipe.zrem(MEMBERS, id)
            pipe.delete(_member_key(id))
            removed, _ = pipe.execute()
            return int(removed)

        return await self._run(leave) > 0

    async def expire(self, now: float) -> list[str]:
        args: list[str | float] = [now - self.ttl, f"{PREFIX}member:"]
        gone: Any = await self._run(lambda: self._expire(keys=[MEMBERS], args=args))
        return [str(member_id) for member_id in gone]

    async def members(self, now: float) -> list[Entry]:
        def fetch() -> list[Entry]:
            live = cast(
                list[tuple[str, float]],
                self._redis.zrangebyscore(MEMBERS, f"({now - self.ttl}", "+inf", withscores=True),
            )
            pipe = self._redis.pipeline(transaction=False)
            for member_id, _ in live:
                pipe.hgetall(_member_key(member_id))
            entries = []
            for (member_id, last_seen), fields in zip(live, pipe.execute(), strict=True):
                if not fields:
                    continue  # left between the two commands
                entries.append(
                    Entry(
                        id=member_id,
                        name=fields["name"],
                        cert=fields["cert"],
                        addresses=tuple(json.loads(fields["addresses"])),
                        last_seen=float(last_seen),
                    )
                )
            return entries

        return await self._run(fetch)

    async def count(self, now: float) -> int:
        return int(
            await self._run(lambda: self._redis.zcount(MEMBERS, f"({now - self.ttl}", "+inf"))
        )

    async def remember_nonce(self, nonce: str, expires_at: float, now: float) -> bool:
        key = f"{PREFIX}nonce:{nonce}"
        ms = max(1, int((expires_at - now) * 1000))
        return bool(await self._run(lambda: self._redis.set(key, 1, nx=True, px=ms)))

    async def aclose(self) -> None:
        # Closing only drops pooled sockets; a dead Redis must not fail a shutdown.
        with contextlib.suppress(StoreError):
            await self._run(self._redis.close)

    async def ping(self) -> None:
        await self._run(self._redis.ping)


def _one_line(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ").strip()
    return text or type(exc).__name__
