"""Lua scripts: every write to a pool is one atomic script that also bumps
the pool's version, appends to its event log and publishes the change.

Every backend state change goes through the prelude's `step()`, which reads
the state machine table (lookaside_registry.machine, rendered into the
prelude) and applies the panic guard (`guard()`), the only place it lives.

Time comes from the Redis server (TIME), so replicas with skewed clocks
agree on lease deadlines. Scripts touch only keys of one pool (one hash
slot) plus a pub/sub channel, which Redis Cluster allows. The pool keys
arrive in the order of `POOL_KEYS`; ARGV[1] is the pool, ARGV[2] the actor.
"""

import json

from lookaside_registry import keys, machine

# KEYS of every pool script, in this order.
POOL_KEYS = (
    "config",
    "backends",
    "leases",
    "version",
    "events",
    "holds",
    "panic",
    "config_version",
)


# A panic guard hold that no write asserted for this long (or for three of
# the pool's health or outlier intervals, if longer) is dropped.
GUARD_STALE_MS = 30_000


def guard_stale_ms(config_json: str) -> int:
    """The staleness bound of a pool's holds (the prelude's `stale_ms()`)."""
    most = GUARD_STALE_MS
    try:
        cfg = json.loads(config_json)
    except ValueError:
        return most
    for part in ("health_checks", "outlier_detection"):
        sub = cfg.get(part) if isinstance(cfg, dict) else None
        if isinstance(sub, dict) and isinstance(sub.get("interval_ms"), int | float):
            most = max(most, 3 * int(sub["interval_ms"]))
    return most


def pool_keys(pool: str) -> list[str]:
    return [keys.pool_key(pool, part) for part in POOL_KEYS]


def compose(body: str, *, prelude: bool = True) -> str:
    """A runnable script: the shared prelude, then the body."""
    text = (PRELUDE + body) if prelude else body
    return (
        text.replace("@EVENTS_MAX@", str(keys.EVENTS_MAX))
        .replace("@CHANGES@", keys.CHANGES)
        .replace("@MACHINE@", machine.lua_table())
        .replace("@GUARD_STALE_MS@", str(GUARD_STALE_MS))
    )


PRELUDE = """
local K_CONFIG, K_BACKENDS, K_LEASES, K_VERSION = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_EVENTS, K_HOLDS, K_PANIC, K_CFGVER = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local POOL, ACTOR = ARGV[1], ARGV[2]
local MACHINE = cjson.decode('@MACHINE@')
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function log_event(now, kind, backend, detail, v)
  redis.call('LPUSH', K_EVENTS, cjson.encode({ts_ms = now, kind = kind, backend = backend,
    actor = ACTOR, detail = detail, version = v}))
  redis.call('LTRIM', K_EVENTS, 0, @EVENTS_MAX@ - 1)
end
local function changed(now, kind, backend, detail)
  local v = redis.call('INCR', K_VERSION)
  log_event(now, kind, backend, detail, v)
  redis.call('PUBLISH', '@CHANGES@', POOL)
  return v
end
local function version()
  return tonumber(redis.call('GET', K_VERSION) or '0')
end
local function load(id)
  local raw = redis.call('HGET', K_BACKENDS, id)
  if raw then return cjson.decode(raw) end
  return nil
end
local function save(id, b)
  redis.call('HSET', K_BACKENDS, id, cjson.encode(b))
end
-- A hold that no write has asserted for this long is dropped (its
-- cause went away without saying so: health checks turned off, say):
-- GUARD_STALE_MS, or three of the pool's probe or judging intervals.
local function stale_ms()
  local most = @GUARD_STALE_MS@
  local raw = redis.call('GET', K_CONFIG)
  if raw then
    local ok, cfg = pcall(cjson.decode, raw)
    if ok and type(cfg) == 'table' then
      for _, part in ipairs({'health_checks', 'outlier_detection'}) do
        local sub = cfg[part]
        local n = type(sub) == 'table' and tonumber(sub['interval_ms']) or nil
        if n and 3 * n > most then most = 3 * n end
      end
    end
  end
  return most
end
-- A panic episode: K_PANIC holds {since_ms, held = [ids]} from the first
-- hold (a 'panic' event) until no backend is held (a 'panic_end' event).
local function episode()
  local raw = redis.call('GET', K_PANIC)
  if not raw then return nil end
  local ok, ep = pcall(cjson.decode, raw)
  if ok and type(ep) == 'table' and ep['since_ms'] then return ep end
  return nil
end
-- Whether this script changed which backends are held: the version is
-- then bumped (by panic_settle, which every such script ends with), so
-- watchers see it, though the lists do not change.
local HOLDS_MOVED = false
local function panic_hold(now, id, detail)
  local ep = episode()
  if not ep then
    ep = {since_ms = now, held = {}}
    log_event(now, 'panic', id, detail, version())
  end
  for _, h in ipairs(ep['held']) do
    if h == id then return end
  end
  table.insert(ep['held'], id)
  redis.call('SET', K_PANIC, cjson.encode(ep))
  HOLDS_MOVED = true
end
local function release(b)
  if (tonumber(b['guard_since_ms']) or 0) > 0 then HOLDS_MOVED = true end
  b['guard_since_ms'], b['guard_seen_ms'], b['guard_for'] = 0, 0, ''
end
-- Ends the episode once no backend is held (stale holds are dropped first).
local function moved()
  if HOLDS_MOVED then
    HOLDS_MOVED = false
    redis.call('INCR', K_VERSION)
    redis.call('PUBLISH', '@CHANGES@', POOL)
  end
end
local function panic_settle(now)
  local ep = episode()
  if not ep then
    redis.call('DEL', K_PANIC)
    moved()
    return
  end
  local all = redis.call('HGETALL', K_BACKENDS)
  local holding = false
  local stale = stale_ms()
  for i = 1, #all, 2 do
    local b = cjson.decode(all[i + 1])
    if (tonumber(b['guard_since_ms']) or 0) > 0 then
      if now - (tonumber(b['guard_seen_ms']) or 0) <= stale then
        holding = true
      else
        release(b)
        save(all[i], b)
      end
    end
  end
  if holding then
    moved()
    return
  end
  HOLDS_MOVED = true
  moved()
  local held = ep['held']
  local span = now - tonumber(ep['since_ms'])
  log_event(now, 'panic_end', table.concat(held, ','), 'panic guard released after ' .. span ..
    ' ms; held ' .. #held .. ' backend(s): ' .. table.concat(held, ','), version())
  redis.call('DEL', K_PANIC)
end
local function key_of(b)
  if not b then return 'absent' end
  if b['hold'] == 'drained' then return 'drained' end
  return b['state'] or 'serving'
end
local function put_key(b, key)
  if key == 'drained' then b['state'], b['hold'] = 'draining', 'drained'
  elseif key == 'disabled' then b['state'], b['hold'] = 'disabled', 'disabled'
  else b['state'], b['hold'] = key, '' end
end
-- The state name a machine state is shown and stored as.
local function shown(key)
  if key == 'drained' then return 'draining' end
  return key
end
local function next_key(event, current)
  return MACHINE[event]['rows'][current]
end
-- Backends out of the lists because of a fault, and all backends.
local function faulty_count()
  local total, faulty = 0, 0
  for _, v in ipairs(redis.call('HVALS', K_BACKENDS)) do
    total = total + 1
    local st = cjson.decode(v)['state']
    if st == 'unhealthy' or st == 'ejected' then faulty = faulty + 1 end
  end
  return total, faulty
end
-- The panic guard. `over`: the change would take more of the pool out
-- than allowed. Returns true when the change must wait. It waits at most
-- hold_ms from the first time it was held, heartbeats or not, and never
-- for a backend that fails its health checks (`exempt`). `why` is the
-- event held; the hold ends when its cause does (a heartbeat for an
-- expiry, a passed check for a health failure, an interval without
-- verdict for an ejection), when the change goes through, or when stale.
local function guard(b, now, over, exempt, hold_ms, why)
  if (not over) or exempt then
    release(b)
    return false
  end
  local since = tonumber(b['guard_since_ms'] or 0) or 0
  if since <= 0 then
    since = now
  elseif now - since >= hold_ms then
    release(b)
    return false
  end
  b['guard_since_ms'], b['guard_seen_ms'], b['guard_for'] = since, now, why
  return true
end
-- Applies `event` to backend `id` (record b, may be nil). Guarded events
-- take `over`/`exempt`/`hold_ms`. Returns outcome, version, previous key.
local function step(id, b, event, now, detail, over, exempt, hold_ms)
  local rule = MACHINE[event]
  local cur = key_of(b)
  local to = rule['rows'][cur]
  if to == nil then return 'refused', 0, cur end
  if to == cur then return 'unchanged', version(), cur end
  if rule['guarded'] and guard(b, now, over, exempt, hold_ms, event) then
    if event == 'health_fail' then b['health_failing'] = true end
    save(id, b)
    panic_hold(now, id, detail .. '; kept listed (panic guard, for at most ' .. hold_ms .. ' ms)')
    return 'held', 0, cur
  end
  if to == 'absent' then
    redis.call('HDEL', K_BACKENDS, id)
    redis.call('ZREM', K_LEASES, id)
  else
    put_key(b, to)
    release(b)
    save(id, b)
  end
  if to == 'drained' or to == 'disabled' then
    redis.call('HSET', K_HOLDS, id, to)
  elseif rule['actor'] == 'operator' then
    redis.call('HDEL', K_HOLDS, id)
  end
  local text = detail
  if text == '' then text = shown(cur) .. '->' .. shown(to) end
  return 'changed', changed(now, rule['kind'], id, text), cur
end
-- The owner rule: whether `owner` is another principal than the one that
-- took b's lease, and (with `now`) that lease is still live. `owner` ''
-- (internal callers that carry the lease id) checks nothing; a record
-- without an owner (written before owners were kept) has none to defend.
local function foreign(b, owner, now)
  local held = b['owner'] or ''
  if owner == '' or held == '' or held == owner then return false end
  return now == nil or (tonumber(b['lease_expires_ms']) or 0) > now
end
"""

# ARGV: pool. A consistent read: version, config, backends (flat), config version.
READ_POOL = """
return {redis.call('GET', K_VERSION) or '0', redis.call('GET', K_CONFIG) or '',
  redis.call('HGETALL', K_BACKENDS), redis.call('GET', K_CFGVER) or '0'}
"""

# ARGV: pool, actor, id, backend json (with its owner), ttl_ms (0 = pool
#       default), default config json, create_pool ('1'|'0'), max backends
REGISTER = """
local id = ARGV[3]
local now = now_ms()
if redis.call('EXISTS', K_CONFIG) == 0 then
  if ARGV[7] ~= '1' then return {'pool_not_found', 0, 0, now} end
  redis.call('SET', K_CONFIG, ARGV[6])
  redis.call('INCR', K_CFGVER)
end
local ttl = tonumber(ARGV[5])
if ttl == 0 then ttl = tonumber(cjson.decode(redis.call('GET', K_CONFIG))['lease_ttl_ms']) end
local old = load(id)
if old and old['static'] then return {'static', 0, 0, now} end
local b = cjson.decode(ARGV[4])
if old and foreign(old, b['owner'] or '', now) then return {'owner', 0, 0, now} end
local most = tonumber(ARGV[8]) or 0
if not old and most > 0 then
  local n = redis.call('HLEN', K_BACKENDS)
  if n >= most then return {'full', n, 0, now} end
end
local cur = key_of(old)
if not old then cur = redis.call('HGET', K_HOLDS, id) or 'absent' end
if old then
  -- A running ejection survives re-registration, and so does the
  -- ejection count that lengthens the next one.
  b['ejections'] = old['ejections'] or 0
  b['ejected_until_ms'] = old['ejected_until_ms'] or 0
  b['health_detail'] = old['health_detail'] or ''
end
put_key(b, next_key('register', cur))
b['registered_at_ms'] = now
b['last_heard_ms'] = now
b['lease_ttl_ms'] = ttl
b['lease_expires_ms'] = now + ttl
save(id, b)
redis.call('ZADD', K_LEASES, now + ttl, id)
local kind = 'registered'
if old then kind = 'reregistered' end
local v = changed(now, kind, id, cur .. '->' .. key_of(b) .. ': ' .. b['ip'] .. ':' .. tostring(b['port']))
if old and (tonumber(old['guard_since_ms']) or 0) > 0 then
  HOLDS_MOVED = true
  panic_settle(now)
end
return {'changed', v, ttl, now}
"""

# ARGV: pool, actor, id, lease id, load json or '', owner ('' = not checked)
# A heartbeat that carries a latency keeps an EWMA of it. In a
# least_loaded pool, when the EWMA has moved more than 20% from the value
# lists were last built with, that value is republished and the version
# bumped, so lists follow real changes but not noise.
HEARTBEAT = """
local id = ARGV[3]
local b = load(id)
if not b then return {'not_found', 0} end
if b['static'] then return {'static', 0} end
if foreign(b, ARGV[6] or '', nil) then return {'owner', 0} end
if ARGV[4] == '' or b['lease_id'] ~= ARGV[4] then return {'lease', 0} end
local now = now_ms()
local ttl = tonumber(b['lease_ttl_ms'])
b['last_heard_ms'] = now
b['lease_expires_ms'] = now + ttl
-- A heartbeat ends a hold of its lease's expiry, not of a health failure
-- or an ejection: those stay bounded by the guard.
local released = b['guard_for'] == 'expire'
if released then release(b) end
local bump = false
if ARGV[5] ~= '' then
  local load_ = cjson.decode(ARGV[5])
  b['load'] = load_
  local lat = tonumber(load_['latency_ms'] or 0) or 0
  if lat > 0 then
    local e = tonumber(b['latency_ewma_ms'] or 0) or 0
    if e <= 0 then e = lat else e = e + 0.5 * (lat - e) end
    b['latency_ewma_ms'] = e
    local pub = tonumber(b['latency_published_ms'] or 0) or 0
    if pub <= 0 or math.abs(e - pub) > 0.2 * pub then
      local cfg = redis.call('GET', K_CONFIG)
      if cfg and cjson.decode(cfg)['policy'] == 'least_loaded' then
        b['latency_published_ms'] = e
        bump = true
      end
    end
  end
end
save(id, b)
redis.call('ZADD', K_LEASES, now + ttl, id)
if released then panic_settle(now) end
if bump then
  redis.call('INCR', K_VERSION)
  redis.call('PUBLISH', '@CHANGES@', POOL)
end
return {'changed', ttl}
"""

# One event on one backend.
# ARGV: pool, actor, id, event, lease id (self events), detail,
#       max eject share (per-mille), guard bound ms, owner (self events;
#       '' = not checked)
STEP = """
local id, event, detail = ARGV[3], ARGV[4], ARGV[6]
local now = now_ms()
local b = load(id)
local rule = MACHINE[event]
if not b then
  if event == 'operator_remove' and redis.call('HDEL', K_HOLDS, id) == 1 then
    return {'changed', changed(now, 'hold_cleared', id, ''), 'absent'}
  end
  return {'not_found', 0, 'absent'}
end
if rule['actor'] == 'self' then
  if b['static'] then return {'static', 0, key_of(b)} end
  if foreign(b, ARGV[9] or '', nil) then return {'owner', 0, key_of(b)} end
  if ARGV[5] == '' or b['lease_id'] ~= ARGV[5] then return {'lease', 0, key_of(b)} end
end
local over = false
if rule['guarded'] then
  local total, faulty = faulty_count()
  over = (faulty + 1) * 1000 > tonumber(ARGV[7]) * total
  if over then
    detail = detail .. ' but ' .. faulty .. ' of ' .. total .. ' backends are already unhealthy or ejected'
  end
end
if event == 'health_fail' or event == 'health_pass' then
  if event == 'health_pass' then b['health_failing'] = false end
  b['health_detail'] = ARGV[6]
end
local outcome, v, cur = step(id, b, event, now, detail, over, false, tonumber(ARGV[8]))
if outcome == 'unchanged' and event == 'health_pass' then
  if b['guard_for'] == 'health_fail' then release(b) end
  save(id, b)
end
panic_settle(now)
return {outcome, v, cur}
"""

# ARGV: pool, actor, id, hold ('drained'|'disabled'). An operator's hold for
# a backend whether or not it is registered now: a registered one takes it
# through the machine, an absent one gets it when it registers.
PUT_HOLD = """
local id, hold = ARGV[3], ARGV[4]
if redis.call('EXISTS', K_CONFIG) == 0 then return {'pool_not_found', 0, 'absent'} end
local now = now_ms()
local b = load(id)
if b then
  local event = 'operator_disable'
  if hold == 'drained' then event = 'operator_drain' end
  local outcome, v, cur = step(id, b, event, now, '', false, false, 0)
  return {outcome, v, cur}
end
if redis.call('HGET', K_HOLDS, id) == hold then return {'unchanged', version(), 'absent'} end
redis.call('HSET', K_HOLDS, id, hold)
return {'changed', changed(now, 'hold_set', id, hold), 'absent'}
"""

# ARGV: pool, actor, max share (per-mille), guard bound ms, ended before
# (ms, Redis TIME; 0 = now)
# Returns {removed ids, held ids}. More than the max share of the pool
# expiring at once (as after an outage) is held by the panic guard, except
# backends that fail their health checks. With `ended before`, only leases
# whose deadline is earlier are candidates (the reaper's outage grace).
REAP = """
local now = now_ms()
local upto = now
local before = tonumber(ARGV[5] or '0') or 0
if before > 0 and before < upto then upto = before end
local ids = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', upto)
if #ids == 0 then
  panic_settle(now)
  return {{}, {}}
end
local total = redis.call('HLEN', K_BACKENDS)
local cands, records = {}, {}
for _, id in ipairs(ids) do
  local b = load(id)
  if (not b) or b['static'] then
    redis.call('ZREM', K_LEASES, id)
  else
    records[id] = b
    table.insert(cands, id)
  end
end
local guarded = 0
for _, id in ipairs(cands) do
  local b = records[id]
  if not (b['state'] == 'unhealthy' or b['health_failing']) then guarded = guarded + 1 end
end
local over = guarded > 1 and guarded * 1000 > tonumber(ARGV[3]) * total
local removed, held = {}, {}
local bound = tonumber(ARGV[4])
for _, id in ipairs(cands) do
  local b = records[id]
  local exempt = b['state'] == 'unhealthy' or (b['health_failing'] == true)
  if guard(b, now, over, exempt, bound, 'expire') then
    save(id, b)
    table.insert(held, id)
  else
    redis.call('HDEL', K_BACKENDS, id)
    redis.call('ZREM', K_LEASES, id)
    table.insert(removed, id)
  end
end
for _, id in ipairs(held) do
  panic_hold(now, id, #cands .. ' of ' .. total ..
    ' leases expired at once; kept listed for at most ' .. bound .. ' ms')
end
if #removed > 0 then
  changed(now, 'expired', table.concat(removed, ','), '')
end
panic_settle(now)
return {removed, held}
"""

# ARGV: pool, actor, id, patch json (fields that are not state), event kind
UPDATE_BACKEND = """
local b = load(ARGV[3])
if not b then return {'not_found', 0} end
for k, v in pairs(cjson.decode(ARGV[4])) do b[k] = v end
save(ARGV[3], b)
return {'changed', changed(now_ms(), ARGV[5], ARGV[3], ARGV[4])}
"""

# ARGV: pool, actor, id, backend json. The conflict check is part of the write.
PUT_STATIC = """
local id = ARGV[3]
if redis.call('EXISTS', K_CONFIG) == 0 then return {'pool_not_found', 0} end
local old = load(id)
if old then return {'conflict', 0} end
local cur = redis.call('HGET', K_HOLDS, id) or 'absent'
local now = now_ms()
local b = cjson.decode(ARGV[4])
put_key(b, next_key('static_add', cur))
b['registered_at_ms'] = now
b['last_heard_ms'] = now
save(id, b)
return {'changed', changed(now, 'static_registered', id, cur .. '->' .. key_of(b))}
"""

# ARGV: pool, actor, config json, mode ('any'|'absent'|'exists'), expected config version or ''
PUT_CONFIG = """
local exists = redis.call('EXISTS', K_CONFIG) == 1
local cv = tonumber(redis.call('GET', K_CFGVER) or '0')
if ARGV[4] == 'absent' and exists then return {'conflict', cv, 0} end
if ARGV[4] == 'exists' and not exists then return {'not_found', cv, 0} end
if ARGV[5] ~= '' and tonumber(ARGV[5]) ~= cv then return {'conflict', cv, 0} end
redis.call('SET', K_CONFIG, ARGV[3])
cv = redis.call('INCR', K_CFGVER)
return {'changed', cv, changed(now_ms(), 'pool_configured', '', ARGV[3])}
"""

# KEYS: the pools index only (no pool keys, no prelude). ARGV: pool, the most
# pools there may be. Counts and adds in one step, so pools created at the
# same moment cannot pass the limit; a name already indexed always passes.
RESERVE_POOL = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return {'changed', 0} end
local n = redis.call('SCARD', KEYS[1])
if n >= tonumber(ARGV[2]) then return {'conflict', n} end
redis.call('SADD', KEYS[1], ARGV[1])
return {'changed', n + 1}
"""

# ARGV: pool, actor, force ('1'|'0'). KEYS: the pool keys, then the other
# keys to delete. Refuses while a backend is live unless forced; the
# version keys are kept and bumped so watchers and compare-and-sets notice.
DELETE_POOL = """
if redis.call('EXISTS', K_CONFIG) == 0 then return {'not_found', 0} end
local now = now_ms()
local live = 0
for _, v in ipairs(redis.call('HVALS', K_BACKENDS)) do
  local b = cjson.decode(v)
  if b['static'] or (tonumber(b['lease_expires_ms']) or 0) > now then live = live + 1 end
end
if live > 0 and ARGV[3] ~= '1' then return {'conflict', live} end
redis.call('DEL', K_CONFIG, K_BACKENDS, K_LEASES, K_EVENTS, K_HOLDS, K_PANIC)
for i = 9, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('INCR', K_CFGVER)
redis.call('INCR', K_VERSION)
redis.call('PUBLISH', '@CHANGES@', POOL)
return {'changed', live}
"""

# ARGV: pool, actor, token digest, token record json. KEYS: the pool keys,
# then the pool's backend tokens. A token is minted only into a pool that
# exists; the event log names it by id, never by the token.
MINT_TOKEN = """
if redis.call('EXISTS', K_CONFIG) == 0 then return {'pool_not_found'} end
redis.call('HSET', KEYS[9], ARGV[3], ARGV[4])
local t = cjson.decode(ARGV[4])
log_event(now_ms(), 'backend_token_minted', '', t['id'] .. ' for ' .. t['address'], version())
return {'changed'}
"""

# ARGV: pool, actor, token id. KEYS: the pool keys, then the pool's backend
# tokens. Removes the token whose id it is.
REVOKE_TOKEN = """
local flat = redis.call('HGETALL', KEYS[9])
for i = 1, #flat, 2 do
  local t = cjson.decode(flat[i + 1])
  if t['id'] == ARGV[3] then
    redis.call('HDEL', KEYS[9], flat[i])
    log_event(now_ms(), 'backend_token_revoked', '', t['id'] .. ' for ' .. t['address'], version())
    return {'changed'}
  end
end
return {'not_found'}
"""
