"""The Redis store: several registryd instances share one view of the members.

Layout under the key prefix ``p2p:``:

- ``members``: a sorted set, member id -> time of the last register/heartbeat;
- ``member:<id>``: a hash with name, cert, addresses (JSON) and lease (the
  SHA-256, in hex, of the lease token of its last register), expiring with the
  lease so that nothing outlives a crash;
- ``nonce:<nonce>``: set with NX and an absolute expiry, which makes replay
  detection atomic across instances;
- ``version``: the membership version (``registryd.store``), created by the
  first script that needs it at the time in microseconds;
- ``changes``: the change log, a sorted set of ``<version>:<id>`` scored by
  version, trimmed to the last ``log_size`` entries by the script that adds
  one, so the version, the log and the change itself move together.

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
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

import redis
import trio
from redis.backoff import NoBackoff
from redis.retry import Retry

from registryd.records import BadRecord, entry_from_fields, skipped
from registryd.redis_connect import connect, describe
from registryd.store import NewMembersLimited, StoreError, WrongLease, start_version
from registryd.table import CHANGE_LOG_SIZE, Changes, Entry

PREFIX = "p2p:"
MEMBERS = PREFIX + "members"
VERSION = PREFIX + "version"
CHANGES = PREFIX + "changes"

# Every script gets KEYS[1] = version, KEYS[2] = changes, ARGV[1] = the time in
# µs and ARGV[2] = the log size first.  Versions travel as decimal strings:
# Lua numbers are doubles, exact for integers below 2**53 (µs since 1970 stay
# below that until the year 2255) but printed as 1.8e+15 by tostring().
_VERSIONED = """
local function current()
  local v = redis.call('GET', KEYS[1])
  if v then return v end
  -- A new store, or one that lost the key: start past every logged version,
  -- and drop that log, which no longer connects to the new versions.
  local start = tonumber(ARGV[1])
  local last = redis.call('ZRANGE', KEYS[2], -1, -1)
  if #last > 0 then
    start = math.max(start, tonumber(string.match(last[1], '^(%d+):')) + 1)
  end
  redis.call('DEL', KEYS[2])
  v = string.format('%d', start)
  redis.call('SET', KEYS[1], v)
  return v
end

-- Equal strings, compared in a time that does not depend on where they differ.
local function same(stored, shown)
  if type(stored) ~= 'string' or #stored ~= #shown then return false end
  local diff = 0
  for i = 1, #shown do
    diff = bit.bor(diff, bit.bxor(string.byte(stored, i), string.byte(shown, i)))
  end
  return diff == 0
end

local function changed(id)
  current()
  local v = string.format('%d', redis.call('INCR', KEYS[1]))
  redis.call('ZADD', KEYS[2], v, v .. ':' .. id)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -1 - tonumber(ARGV[2]))
  return v
end
"""

# KEYS[3] members, KEYS[4] member:<id>; ARGV[3..] id, name, cert, addresses, now, lease ms,
# ttl, lease hash, new ids allowed ('1' or '0').  Answers 1 (new), 0 (was live), -1 (new
# and not allowed: nothing written).
_REGISTER = (
    _VERSIONED
    + """
local old = redis.call('ZSCORE', KEYS[3], ARGV[3])
local live = old and tonumber(old) + tonumber(ARGV[9]) > tonumber(ARGV[7])
if not live and ARGV[11] ~= '1' then return -1 end
local unchanged = false
if live then
  local f = redis.call('HMGET', KEYS[4], 'name', 'cert', 'addresses')
  unchanged = f[1] == ARGV[4] and f[2] == ARGV[5] and f[3] == ARGV[6]
end
redis.call('HSET', KEYS[4], 'name', ARGV[4], 'cert', ARGV[5], 'addresses', ARGV[6],
  'lease', ARGV[10])
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[3])
redis.call('PEXPIRE', KEYS[4], ARGV[8])
if not unchanged then changed(ARGV[3]) end
if live then return 0 end
return 1
"""
)

# KEYS[3] members, KEYS[4] member:<id>; ARGV[3..] id, now, ttl, lease ms, lease hash.
# Answers the version, false (no live member) or 0 (another lease: nothing changed).
_RENEW = (
    _VERSIONED
    + """
local old = redis.call('ZSCORE', KEYS[3], ARGV[3])
if not old or tonumber(old) + tonumber(ARGV[5]) <= tonumber(ARGV[4]) then return false end
if not same(redis.call('HGET', KEYS[4], 'lease'), ARGV[7]) then return 0 end
redis.call('ZADD', KEYS[3], 'XX', ARGV[4], ARGV[3])
redis.call('PEXPIRE', KEYS[4], ARGV[6])
return current()
"""
)

# KEYS[3] members, KEYS[4] member:<id>; ARGV[3..] id, now, ttl, lease hash.  Answers 1
# (removed), 0 (no live member: an expired one is left to the sweep) or -1 (another lease).
_LEAVE = (
    _VERSIONED
    + """
local old = redis.call('ZSCORE', KEYS[3], ARGV[3])
if not old or tonumber(old) + tonumber(ARGV[5]) <= tonumber(ARGV[4]) then return 0 end
if not same(redis.call('HGET', KEYS[4], 'lease'), ARGV[6]) then return -1 end
redis.call('DEL', KEYS[4])
redis.call('ZREM', KEYS[3], ARGV[3])
changed(ARGV[3])
return 1
"""
)

# KEYS[3] members; ARGV[3] the last expired renewal time, ARGV[4] the member key prefix.
_EXPIRE = (
    _VERSIONED
    + """
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[3])
for _, id in ipairs(gone) do
  redis.call('ZREM', KEYS[3], id)
  redis.call('DEL', ARGV[4] .. id)
  changed(id)
end
return gone
"""
)

_VERSION = _VERSIONED + "return current()\n"

# KEYS[3] members; ARGV[3] since, ARGV[4] the last expired renewal time, ARGV[5]
# the member key prefix.  Answers {version, 1} when the log cannot tell (the
# caller then lists everyone), else {version, 0, {{id, last_seen, name, cert,
# addresses}...}, {left id...}}, read in one atomic step.
_CHANGES = (
    _VERSIONED
    + """
local version = current()
local since = tonumber(ARGV[3])
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)
local floor = tonumber(version)
if #oldest > 0 then floor = tonumber(string.match(oldest[1], '^(%d+):')) - 1 end
if since < floor or since > tonumber(version) then return {version, 1} end
local limit = redis.call('ZCARD', KEYS[3])
local entries = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[3], '+inf')
local seen, count, joined, left = {}, 0, {}, {}
for i = #entries, 1, -1 do
  local id = string.match(entries[i], '^%d+:(.*)$')
  if not seen[id] then
    seen[id] = true
    count = count + 1
    if count > limit then return {version, 1} end
    local score = redis.call('ZSCORE', KEYS[3], id)
    local fields = false
    if score and tonumber(score) > tonumber(ARGV[4]) then
      fields = redis.call('HMGET', ARGV[5] .. id, 'name', 'cert', 'addresses')
    end
    if fields and fields[1] and fields[2] and fields[3] then
      joined[#joined + 1] = {id, score, fields[1], fields[2], fields[3]}
    else
      left[#left + 1] = id
    end
  end
end
return {version, 0, joined, left}
"""
)

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
    def __init__(
        self, url: str, ttl: float, *, max_threads: int = 8, log_size: int = CHANGE_LOG_SIZE
    ) -> None:
        self.ttl = ttl
        self._log_size = log_size
        self._name = describe(url)
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
        self._register = self._redis.register_script(_REGISTER)
        self._renew = self._redis.register_script(_RENEW)
        self._leave = self._redis.register_script(_LEAVE)
        self._expire = self._redis.register_script(_EXPIRE)
        self._version = self._redis.register_script(_VERSION)
        self._changes = self._redis.register_script(_CHANGES)
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
        self,
        id: str,
        name: str,
        cert: str,
        addresses: tuple[str, ...],
        now: float,
        *,
        lease_hash: str,
        allow_new: bool = True,
    ) -> bool:
        args: list[str | float] = [id, name, cert, json.dumps(list(addresses))]
        args += [now, self._lease_ms(), self.ttl, lease_hash, "1" if allow_new else "0"]
        outcome = int(await self._script(self._register, [MEMBERS, _member_key(id)], args))
        if outcome < 0:
            raise NewMembersLimited(id)
        return outcome == 1

    async def renew(self, id: str, now: float, *, lease_hash: str) -> int | None:
        args: list[str | float] = [id, now, self.ttl, self._lease_ms(), lease_hash]
        version = await self._script(self._renew, [MEMBERS, _member_key(id)], args)
        if version is None:
            return None
        if isinstance(version, int):  # the script's 0; a version comes as a string
            raise WrongLease(id)
        return int(version)

    async def leave(self, id: str, now: float, *, lease_hash: str) -> bool:
        args: list[str | float] = [id, now, self.ttl, lease_hash]
        outcome = int(await self._script(self._leave, [MEMBERS, _member_key(id)], args))
        if outcome < 0:
            raise WrongLease(id)
        return outcome == 1

    async def expire(self, now: float) -> list[str]:
        args: list[str | float] = [now - self.ttl, f"{PREFIX}member:"]
        gone: Any = await self._script(self._expire, [MEMBERS], args)
        return [str(member_id) for member_id in gone]

    async def version(self, now: float) -> int:
        return int(await self._script(self._version, [], []))

    async def changes_since(self, since: int | None, now: float) -> Changes:
        if since is not None:
            args: list[str | float] = [str(since), now - self.ttl, f"{PREFIX}member:"]
            answer: Any = await self._script(self._changes, [MEMBERS], args)
            if int(answer[1]) == 0:
                members = self._entries(
                    (id, last_seen, name, cert, addresses)
                    for id, last_seen, name, cert, addresses in answer[2]
                )
                return Changes(int(answer[0]), False, members, [str(id) for id in answer[3]])
            version = int(answer[0])
        else:
            version = await self.version(now)
        # Read before the list: a cursor older than the list only repeats changes.
        return Changes(version, True, await self.members(now))

    async def _script(self, script: Any, keys: list[str], args: list[str | float]) -> Any:
        """Run one of the scripts above, with the keys and arguments they all share."""
        shared: list[str | float] = [start_version(), self._log_size]
        return await self._run(
            lambda: script(keys=[VERSION, CHANGES, *keys], args=[*shared, *args])
        )

    async def members(self, now: float) -> list[Entry]:
        def fetch() -> list[tuple[Any, ...]]:
            live = cast(
                list[tuple[str, float]],
                self._redis.zrangebyscore(MEMBERS, f"({now - self.ttl}", "+inf", withscores=True),
            )
            pipe = self._redis.pipeline(transaction=False)
            for member_id, _ in live:
                pipe.hmget(_member_key(member_id), "name", "cert", "addresses")
            return [
                (member_id, last_seen, *fields)
                for (member_id, last_seen), fields in zip(live, pipe.execute(), strict=True)
                if any(field is not None for field in fields)  # else: left between the commands
            ]

        return self._entries(await self._run(fetch))

    def _entries(self, records: Iterable[tuple[Any, ...]]) -> list[Entry]:
        """Entries of raw (id, last seen, name, cert, addresses) records; bad ones skipped."""
        entries = []
        for record in records:
            try:
                entries.append(entry_from_fields(*record))
            except BadRecord as exc:
                skipped(str(record[0]), str(exc), self._name)
        return entries

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
