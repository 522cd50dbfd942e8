"""The Redis store's Lua scripts (registryd.redis_store has the layout they keep).

Each operation is one script, so it is atomic however many registryd share
the Redis.  Times travel as decimal strings (Lua numbers are doubles: exact
for seconds with a fraction); a member is live while its ``exp`` field is
greater than the caller's ``now``.  No script walks every member: the cost of
each is that of the members it answers or drops.
"""

from __future__ import annotations

# Shared helpers, prepended to the scripts that need them.
_SAME = """
-- Equal strings, compared in a time that does not depend on where they differ.
local function same(stored, shown)
  if type(stored) ~= 'string' or #stored ~= #shown then return false end
  local diff = 0
  for i = 1, #shown do
    diff = bit.bor(diff, bit.bxor(string.byte(stored, i), string.byte(shown, i)))
  end
  return diff == 0
end
"""

_LIVE_COUNT = """
local function live_count(expiry, now)
  return redis.call('ZCOUNT', expiry, '(' .. now, '+inf')
end
"""

# KEYS: member hash, ids, names, expiry.  ARGV: id, name, cert, addresses (JSON), now,
# expires_at, key lifetime (ms), lease hash, new ids allowed ('1'/'0').
# Answers {1 new | 0 was live | -1 new and not allowed (nothing written), live count}.
REGISTER = (
    _LIVE_COUNT
    + """
local old = redis.call('HMGET', KEYS[1], 'name', 'exp')
local live = old[2] and tonumber(old[2]) > tonumber(ARGV[5])
if not live and ARGV[9] ~= '1' then return {-1, 0} end
if old[1] and old[1] ~= ARGV[2] then
  redis.call('ZREM', KEYS[3], old[1] .. '\\0' .. ARGV[1])
end
redis.call('HSET', KEYS[1], 'name', ARGV[2], 'cert', ARGV[3], 'addresses', ARGV[4],
  'seen', ARGV[5], 'exp', ARGV[6], 'lease', ARGV[8])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('ZADD', KEYS[3], 0, ARGV[2] .. '\\0' .. ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[1])
local new = 1
if live then new = 0 end
return {new, live_count(KEYS[4], ARGV[5])}
"""
)

# KEYS: member hash, expiry.  ARGV: id, now, expires_at, key lifetime (ms), lease hash.
# Answers the live count, false (no live member) or -1 (another lease: nothing changed).
RENEW = (
    _SAME
    + _LIVE_COUNT
    + """
local f = redis.call('HMGET', KEYS[1], 'exp', 'lease')
if not f[1] or tonumber(f[1]) <= tonumber(ARGV[2]) then return false end
if not same(f[2], ARGV[5]) then return -1 end
redis.call('HSET', KEYS[1], 'seen', ARGV[2], 'exp', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return live_count(KEYS[2], ARGV[2])
"""
)

# KEYS: member hash, ids, names, expiry.  ARGV: id, now, lease hash.  Answers 1 (removed),
# 0 (no live member: one whose lease ran out is the cleanup's) or -1 (another lease).
LEAVE = (
    _SAME
    + """
local f = redis.call('HMGET', KEYS[1], 'exp', 'lease', 'name')
if not f[1] or tonumber(f[1]) <= tonumber(ARGV[2]) then return 0 end
if not same(f[2], ARGV[3]) then return -1 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
if f[3] then redis.call('ZREM', KEYS[3], f[3] .. '\\0' .. ARGV[1]) end
return 1
"""
)

# KEYS: ids, names, expiry.  ARGV: now, member key prefix, how many at most.
# The members whose lease ran out, from the expiry index: O(expired), never a sweep.
EXPIRE = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local dropped = {}
for _, id in ipairs(gone) do
  local key = ARGV[2] .. id
  local f = redis.call('HMGET', key, 'name', 'exp')
  if f[2] and tonumber(f[2]) > tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[3], f[2], id)  -- renewed: the index was behind
  else
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[3], id)
    if f[1] then redis.call('ZREM', KEYS[2], f[1] .. '\\0' .. id) end
    dropped[#dropped + 1] = id
  end
end
return dropped
"""

# Reads the live records of an index range; drops entries whose hash is gone (Redis
# expired it after an outage of every registry: nobody else would).
_RECORDS = """
local function fields_of(certs)
  if certs then return {'exp', 'seen', 'name', 'addresses', 'cert'} end
  return {'exp', 'seen', 'name', 'addresses'}
end

-- The live records {id, exp, seen, name, addresses, cert or false} of an index range, at
-- most ``want``, scanning at most ``cap`` entries; ``strip`` turns an index entry into an
-- id.  Answers the records, the last entry scanned (or false) and whether the scan
-- stopped at ``cap`` with records still wanted.
local function scan(index, low, high, want, cap, now, prefix, certs, strip)
  local rows, last, scanned, names = {}, false, 0, fields_of(certs)
  while #rows < want and scanned < cap do
    local batch = redis.call('ZRANGEBYLEX', index, low, high, 'LIMIT', 0, want - #rows)
    if #batch == 0 then return rows, last, false end
    for _, entry in ipairs(batch) do
      local id = strip(entry)
      local f = redis.call('HMGET', prefix .. id, unpack(names))
      if f[1] and tonumber(f[1]) > now then
        rows[#rows + 1] = {id, f[1], f[2], f[3], f[4], f[5] or false}
      elseif not f[1] then
        redis.call('ZREM', index, entry)
      end
      last, low, scanned = entry, '(' .. entry, scanned + 1
    end
  end
  return rows, last, scanned >= cap and #rows < want
end

local function plain(entry) return entry end
"""

# KEYS: ids.  ARGV: lower bound ('-' or '(<after>'), limit, now, member key prefix,
# certs ('1'/'0'), scan cap.  Answers {records, next id or false}.
PAGE = (
    _RECORDS
    + """
local now, limit = tonumber(ARGV[3]), tonumber(ARGV[2])
local rows, last, cut = scan(KEYS[1], ARGV[1], '+', limit, tonumber(ARGV[6]), now, ARGV[4],
  ARGV[5] == '1', plain)
local following = false
if cut then
  following = last
elseif #rows == limit then
  local rest = redis.call('ZRANGEBYLEX', KEYS[1], '(' .. last, '+', 'LIMIT', 0, 1)
  if #rest > 0 then following = last end
end
return {rows, following}
"""
)

# KEYS: ids, names.  ARGV: name, prefix ('' for none), now, member key prefix, limit,
# scan cap.  Answers {records of the first ``limit`` by id, 1 if there are more}.
RESOLVE = (
    _RECORDS
    + """
local name, prefix, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local limit, cap = tonumber(ARGV[5]), tonumber(ARGV[6])
local skip = #name + 2
local function of_name(entry) return string.sub(entry, skip) end
local found, seen = {}, {}
local function add(rows)
  for _, row in ipairs(rows) do
    if not seen[row[1]] then seen[row[1]] = true; found[#found + 1] = row end
  end
end
-- The first limit + 1 of each, by id, hold the first limit + 1 of their union.
local named, _, cut = scan(KEYS[2], '[' .. name .. '\\0', '(' .. name .. '\\1',
  limit + 1, cap, now, ARGV[4], true, of_name)
add(named)
if prefix ~= '' then
  local prefixed, _, cut_prefixed = scan(KEYS[1], '[' .. prefix, '(' .. prefix .. '{',
    limit + 1, cap, now, ARGV[4], true, plain)
  cut = cut or cut_prefixed
  add(prefixed)
end
table.sort(found, function(a, b) return a[1] < b[1] end)
local more = 0
if #found > limit or cut then more = 1 end
local first = {}
for i = 1, math.min(limit, #found) do first[i] = found[i] end
return {first, more}
"""
)

# KEYS: processes.  ARGV: this process's id, seconds it counts as alive.
# The processes' own clocks may differ: Redis's is the one they share.
PROCESSES = """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[2])))
return redis.call('ZCARD', KEYS[1])
"""
