"""Health state of backends, written by the replica that probes them.

Only SERVING <-> UNHEALTHY moves here: a drained or disabled backend is an
operator's decision that health checking never overrides, and an ejected
one waits for its ejection to end. Marking a backend unhealthy is refused
when it would leave more than `max_share` of the pool unhealthy or ejected
(the panic guard); the refusal is logged as a 'panic' event at most every
30 s.
"""

from __future__ import annotations

import enum

from lookaside.registry import keys, scripts
from lookaside.registry.store import RegistryStore

# KEYS: backends version events panic ; ARGV: id, healthy ('1'|'0'), max per-mille, pool, actor, detail
SET_HEALTH = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local b = cjson.decode(raw)
local now = now_ms()
if ARGV[2] == '1' then
  if b['state'] ~= 'unhealthy' then return 2 end
  b['state'] = 'serving'
  b['health_detail'] = ARGV[6]
  redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(b))
  changed(KEYS[2], KEYS[3], ARGV[4], now, 'healthy', ARGV[1], ARGV[5], ARGV[6])
  return 1
end
if b['state'] ~= 'serving' then return 2 end
local total, unhealthy = 0, 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  total = total + 1
  local st = cjson.decode(v)['state']
  if st == 'unhealthy' or st == 'ejected' then unhealthy = unhealthy + 1 end
end
if (unhealthy + 1) * 1000 > tonumber(ARGV[3]) * total then
  if redis.call('SET', KEYS[4], now, 'NX', 'PX', 30000) then
    redis.call('LPUSH', KEYS[3], cjson.encode({ts_ms = now, kind = 'panic', backend = ARGV[1],
      actor = ARGV[5], detail = 'health check failed (' .. ARGV[6] .. ') but ' .. unhealthy .. ' of ' ..
      total .. ' backends are already unhealthy or ejected; kept listed'}))
    redis.call('LTRIM', KEYS[3], 0, %(events_max)d - 1)
  end
  return -1
end
b['state'] = 'unhealthy'
b['health_detail'] = ARGV[6]
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(b))
changed(KEYS[2], KEYS[3], ARGV[4], now, 'unhealthy', ARGV[1], ARGV[5], ARGV[6])
return 1
"""


class HealthWrite(enum.IntEnum):
    NOT_FOUND = 0
    CHANGED = 1
    UNCHANGED = 2
    HELD_BY_PANIC_GUARD = -1


class HealthStore:
    def __init__(self, store: RegistryStore) -> None:
        self.store = store
        self._set = store.redis.register_script(scripts.compose(SET_HEALTH))

    async def set_health(
        self,
        pool: str,
        backend_id: str,
        healthy: bool,
        *,
        max_share: float = 0.5,
        actor: str = "health",
        detail: str = "",
    ) -> HealthWrite:
        result = await self._set(
            keys=[keys.backends(pool), keys.version(pool), keys.events(pool), keys.panic(pool)],
            args=[
                backend_id,
                "1" if healthy else "0",
                int(max_share * 1000),
                pool,
                actor,
                detail[:200],
            ],
        )
        return HealthWrite(int(result))
