"""Lua scripts: every write to a pool is one atomic script that also bumps
the pool's version, appends to its event log and publishes the change.

Time comes from the Redis server (TIME), so replicas with skewed clocks
agree on lease deadlines. Scripts touch only keys of one pool (one hash
slot) plus a pub/sub channel, which Redis Cluster allows.
"""

from lookaside.registry import keys


def compose(body: str) -> str:
    """A runnable script: the shared prelude, then the body, with the event
    log cap and change channel filled in."""
    params = {"events_max": keys.EVENTS_MAX, "changes": keys.CHANGES}
    return PRELUDE % params + (body % params if "%(" in body else body)


PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function changed(version_key, events_key, pool, now, kind, backend, actor, detail)
  local v = redis.call('INCR', version_key)
  redis.call('LPUSH', events_key, cjson.encode({ts_ms = now, kind = kind, backend = backend,
    actor = actor, detail = detail, version = v}))
  redis.call('LTRIM', events_key, 0, %(events_max)d - 1)
  redis.call('PUBLISH', '%(changes)s', pool)
  return v
end
"""

# KEYS: config backends leases version events
# ARGV: id, backend json, ttl_ms (0 = pool default), default config json, pool, actor
REGISTER = """
local now = now_ms()
redis.call('SET', KEYS[1], ARGV[4], 'NX')
local ttl = tonumber(ARGV[3])
if ttl == 0 then ttl = tonumber(cjson.decode(redis.call('GET', KEYS[1]))['lease_ttl_ms']) end
local b = cjson.decode(ARGV[2])
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old then
  -- An operator's hold and a running ejection survive re-registration, and
  -- so does the ejection count that lengthens the next one.
  local o = cjson.decode(old)
  b['ejections'] = o['ejections'] or 0
  if o['state'] == 'disabled' then b['state'] = 'disabled' end
  if o['state'] == 'ejected' and (tonumber(o['ejected_until_ms']) or 0) > now then
    b['state'] = 'ejected'
    b['ejected_until_ms'] = o['ejected_until_ms']
  end
end
b['registered_at_ms'] = now
b['last_heard_ms'] = now
b['lease_ttl_ms'] = ttl
b['lease_expires_ms'] = now + ttl
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(b))
redis.call('ZADD', KEYS[3], now + ttl, ARGV[1])
local kind = 'registered'
if old then kind = 'reregistered' end
local v = changed(KEYS[4], KEYS[5], ARGV[5], now, kind, ARGV[1], ARGV[6],
  b['ip'] .. ':' .. tostring(b['port']))
return {v, now, ttl}
"""

# KEYS: backends leases config version ; ARGV: id, lease_id, load json or '', pool
# A heartbeat that carries a latency keeps an EWMA of it. In a
# least_loaded pool, when the EWMA has moved more than 20% from the value
# lists were last built with, that value is republished and the version
# bumped, so lists follow real changes but not noise.
HEARTBEAT = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return {0, 0} end
local b = cjson.decode(raw)
if b['lease_id'] ~= ARGV[2] then return {-1, 0} end
local now = now_ms()
local ttl = tonumber(b['lease_ttl_ms'])
b['last_heard_ms'] = now
b['lease_expires_ms'] = now + ttl
local bump = false
if ARGV[3] ~= '' then
  local load = cjson.decode(ARGV[3])
  b['load'] = load
  local lat = tonumber(load['latency_ms'] or 0) or 0
  if lat > 0 then
    local e = tonumber(b['latency_ewma_ms'] or 0) or 0
    if e <= 0 then e = lat else e = e + 0.5 * (lat - e) end
    b['latency_ewma_ms'] = e
    local pub = tonumber(b['latency_published_ms'] or 0) or 0
    if pub <= 0 or math.abs(e - pub) > 0.2 * pub then
      local cfg = redis.call('GET', KEYS[3])
      if cfg and cjson.decode(cfg)['policy'] == 'least_loaded' then
        b['latency_published_ms'] = e
        bump = true
      end
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(b))
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
if bump then
  redis.call('INCR', KEYS[4])
  redis.call('PUBLISH', '%(changes)s', ARGV[4])
end
return {1, ttl}
"""

# KEYS: backends version events ; ARGV: id, lease_id, pool, actor
# Serving or unhealthy -> draining, for the backend itself (lease checked).
DRAIN = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local b = cjson.decode(raw)
if b['lease_id'] ~= ARGV[2] then return -1 end
if b['state'] == 'draining' or b['state'] == 'disabled' then return 2 end
local was = b['state']
b['state'] = 'draining'
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(b))
changed(KEYS[2], KEYS[3], ARGV[3], now_ms(), 'draining', ARGV[1], ARGV[4], was .. '->draining')
return 1
"""

# KEYS: backends leases version events ; ARGV: id, lease_id ('' = any), pool, actor
DEREGISTER = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
if ARGV[2] ~= '' and cjson.decode(raw)['lease_id'] ~= ARGV[2] then return -1 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
changed(KEYS[3], KEYS[4], ARGV[3], now_ms(), 'deregistered', ARGV[1], ARGV[4], '')
return 1
"""

# KEYS: backends leases version events panic ; ARGV: pool, max share (per-mille)
# Returns {status, ids...}: 0 nothing expired, 1 removed, -1 held by the
# panic guard (more than the max share of the pool expiring at once, as
# after a Redis or network outage): they stay listed and a 'panic' event is
# logged (at most every 30 s).
REAP = """
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #ids == 0 then return {0} end
local total = redis.call('HLEN', KEYS[1])
if #ids > 1 and #ids * 1000 > tonumber(ARGV[2]) * total then
  if redis.call('SET', KEYS[5], now, 'NX', 'PX', 30000) then
    redis.call('LPUSH', KEYS[4], cjson.encode({ts_ms = now, kind = 'panic', backend = table.concat(ids, ','),
      actor = 'lease', detail = #ids .. ' of ' .. total .. ' leases expired at once; kept listed'}))
    redis.call('LTRIM', KEYS[4], 0, %(events_max)d - 1)
  end
  return {-1, unpack(ids)}
end
for _, id in ipairs(ids) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
changed(KEYS[3], KEYS[4], ARGV[1], now, 'expired', table.concat(ids, ','), 'lease', '')
return {1, unpack(ids)}
"""

# KEYS: backends version events ; ARGV: id, patch json, pool, actor, event kind
UPDATE_BACKEND = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local b = cjson.decode(raw)
for k, v in pairs(cjson.decode(ARGV[2])) do b[k] = v end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(b))
return changed(KEYS[2], KEYS[3], ARGV[3], now_ms(), ARGV[5], ARGV[1], ARGV[4], ARGV[2])
"""

# KEYS: backends version events ; ARGV: id, backend json, pool, actor
PUT_STATIC = """
local now = now_ms()
local b = cjson.decode(ARGV[2])
b['registered_at_ms'] = now
b['last_heard_ms'] = now
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(b))
return changed(KEYS[2], KEYS[3], ARGV[3], now, 'static_registered', ARGV[1], ARGV[4], '')
"""

# KEYS: config version events ; ARGV: config json, pool, actor, only_if_absent
PUT_CONFIG = """
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return changed(KEYS[2], KEYS[3], ARGV[2], now_ms(), 'pool_configured', '', ARGV[3], ARGV[1])
"""
