"""Outlier detection: ejecting backends that lose their callers' calls.

The evidence is what clients report per backend over an interval: calls
finished, and of those the ones known to have reached the backend. A call
that finished without reaching it (failed to send, reset, or timed out with
nothing from the server) counts against the backend. Front ends add these
counts to the pool's `outcomes` hash; the replica that owns the pool takes
them (read and reset, atomically) once per `outlier_interval_ms` and judges
them here, with the two algorithms of gRFC A50:

- failure percentage: a backend with more than `outlier_failure_percent`
  of its calls lost;
- success rate: a backend whose share of delivered calls is below the
  pool's mean by more than `outlier_stdev_factor`/1000 standard deviations.

Both consider only backends with at least `outlier_request_volume` calls in
the interval, and judge no one when fewer than `outlier_min_hosts` backends
qualify. An ejection lasts base x (number of ejections in a row), capped at
max(base, max), and the count drops by one for each interval in which a
backend qualified (enough calls) and was not judged an outlier. An interval
with too few calls to judge leaves the count alone: reports arrive
periodically, so the first interval after an ejection often holds too
little evidence either way. Ejections never take more than
`outlier_max_ejection_percent` of the pool (at least one backend may always
go), nor, together with unhealthy backends, more than the balancer's
max eject share (the panic guard).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lookaside.registry import keys, lua, scripts
from lookaside.registry.errors import guarded
from lookaside.registry.model import PoolConfig

if TYPE_CHECKING:  # the store's SignalOps read outcomes with parse_outcomes
    from lookaside.registry.store import RegistryStore

# Fields of the outcomes hash: "<backend id>:<suffix>".
FINISHED = "f"
RECEIVED = "r"
FAILED_TO_SEND = "s"


@dataclass(frozen=True, slots=True)
class Outcomes:
    """Calls that clients finished on one backend in one interval."""

    finished: int = 0
    received: int = 0
    failed_to_send: int = 0

    @property
    def lost(self) -> int:
        return max(0, self.finished - self.received)


@dataclass(frozen=True, slots=True)
class Verdict:
    backend_id: str
    detail: str


def outcome_fields(backend_id: str, finished: int, received: int, failed: int) -> dict[str, int]:
    """The increments one report adds to a pool's outcomes hash."""
    return {
        f"{backend_id}:{FINISHED}": finished,
        f"{backend_id}:{RECEIVED}": received,
        f"{backend_id}:{FAILED_TO_SEND}": failed,
    }


def parse_outcomes(raw: Mapping[Any, bytes | str | int]) -> dict[str, Outcomes]:
    parts: dict[str, dict[str, int]] = {}
    for k, v in raw.items():
        key = k.decode() if isinstance(k, bytes) else k
        backend_id, _, suffix = key.rpartition(":")
        if backend_id:
            parts.setdefault(backend_id, {})[suffix] = int(v)
    return {
        bid: Outcomes(p.get(FINISHED, 0), p.get(RECEIVED, 0), p.get(FAILED_TO_SEND, 0))
        for bid, p in parts.items()
    }


def qualified(outcomes: Mapping[str, Outcomes], config: PoolConfig) -> dict[str, Outcomes]:
    """The backends with enough calls in the interval to be judged."""
    volume = max(1, config.outlier_detection.request_volume)
    return {bid: o for bid, o in outcomes.items() if o.finished >= volume}


def judge(outcomes: Mapping[str, Outcomes], config: PoolConfig) -> list[Verdict]:
    """The backends that this interval's outcomes mark as outliers."""
    qualified_ = qualified(outcomes, config)
    if len(qualified_) < max(1, config.outlier_detection.min_hosts):
        return []
    out: dict[str, str] = {}
    if config.outlier_detection.stdev_factor > 0:
        rates = {bid: o.received / o.finished for bid, o in qualified_.items()}
        mean = sum(rates.values()) / len(rates)
        stdev = math.sqrt(sum((r - mean) ** 2 for r in rates.values()) / len(rates))
        floor = mean - stdev * config.outlier_detection.stdev_factor / 1000
        for bid, rate in rates.items():
            if rate < floor:
                out[bid] = (
                    f"success rate {rate:.1%} below {floor:.1%} "
                    f"(pool mean {mean:.1%}, stdev {stdev:.1%})"
                )
    if config.outlier_detection.failure_percent > 0:
        for bid, o in qualified_.items():
            if (
                bid not in out
                and o.lost * 100 > config.outlier_detection.failure_percent * o.finished
            ):
                out[bid] = (
                    f"{o.lost} of {o.finished} calls lost "
                    f"({o.failed_to_send} failed to send), over {config.outlier_detection.failure_percent}%"
                )
    return [Verdict(bid, detail) for bid, detail in sorted(out.items())]


# ARGV: pool, actor, judged ('1' at the end of an interval, '0' otherwise),
#       verdicts json [[id, detail]...], passed json [id...],
#       max eject share (per-mille), max ejection percent, base ms, max ms,
#       guard bound ms
# Ends ejections whose time is up; at the end of an interval, ejects the
# judged backends within the limits and lowers the ejection count of the
# backends that passed. Every state change is a step() of the machine.
# Returns {ejected ids, ended ids, held ids}.
SWEEP = """
local now = now_ms()
local all = redis.call('HGETALL', K_BACKENDS)
local backends, order = {}, {}
local total, faulty, ejected = 0, 0, 0
for i = 1, #all, 2 do
  local b = cjson.decode(all[i + 1])
  backends[all[i]] = b
  table.insert(order, all[i])
  total = total + 1
  if b['state'] == 'ejected' then ejected = ejected + 1 end
  if b['state'] == 'ejected' or b['state'] == 'unhealthy' then faulty = faulty + 1 end
end
table.sort(order)
local bound = tonumber(ARGV[10])
local ended, done, held = {}, {}, {}
for _, id in ipairs(order) do
  local b = backends[id]
  if b['state'] == 'ejected' and (tonumber(b['ejected_until_ms']) or 0) <= now then
    b['health_detail'] = ''
    if step(id, b, 'ejection_end', now, '', false, false, bound) == 'changed' then
      ejected, faulty = ejected - 1, faulty - 1
      table.insert(ended, id)
    end
  end
end
if ARGV[3] == '1' then
  local judged = {}
  for _, v in ipairs(cjson.decode(ARGV[4])) do
    local id, detail = v[1], v[2]
    judged[id] = true
    local b = backends[id]
    if b and key_of(b) == 'serving' then
      if ejected * 100 >= tonumber(ARGV[7]) * total then
        -- outlier_max_ejection_percent, a limit of its own (not the panic
        -- guard): one event while it keeps the backend, not one per interval.
        table.insert(held, id)
        if not b['outlier_limited'] then
          b['outlier_limited'] = true
          save(id, b)
          log_event(now, 'outlier_held', id, 'outlier (' .. detail .. ') but ' .. ejected .. ' of ' ..
            total .. ' backends are already ejected (max ' .. ARGV[7] .. '%); kept listed', version())
        end
      else
        local over = (faulty + 1) * 1000 > tonumber(ARGV[6]) * total
        local n = (tonumber(b['ejections']) or 0) + 1
        local base, cap = tonumber(ARGV[8]), tonumber(ARGV[9])
        if cap < base then cap = base end
        local span = base * n
        if span > cap then span = cap end
        local before = {b['ejections'], b['ejected_until_ms'], b['health_detail']}
        b['ejections'], b['ejected_until_ms'], b['health_detail'] = n, now + span, detail
        local why = detail .. '; for ' .. span .. ' ms (ejection ' .. n .. ')'
        if over then
          why = 'outlier (' .. detail .. ') but ' .. faulty .. ' of ' .. total ..
            ' backends are already unhealthy or ejected'
        end
        local outcome = step(id, b, 'eject', now, why, over, false, bound)
        if outcome == 'changed' then
          ejected, faulty = ejected + 1, faulty + 1
          table.insert(done, id)
        else
          b['ejections'], b['ejected_until_ms'], b['health_detail'] = before[1], before[2], before[3]
          save(id, b)
          table.insert(held, id)
        end
      end
    end
  end
  for _, id in ipairs(cjson.decode(ARGV[5])) do
    local b = backends[id]
    local n = b and (tonumber(b['ejections']) or 0) or 0
    if n > 0 and b['state'] ~= 'ejected' and not judged[id] then
      b['ejections'] = n - 1
      save(id, b)
    end
  end
  -- A held ejection that this interval did not judge again is over.
  for _, id in ipairs(order) do
    local b = backends[id]
    if (b['guard_for'] == 'eject' or b['outlier_limited']) and not judged[id] then
      if b['guard_for'] == 'eject' then release(b) end
      b['outlier_limited'] = nil
      save(id, b)
    end
  end
end
panic_settle(now)
return {done, ended, held}
"""


# KEYS: outcomes. Read and reset in one step.
TAKE = """
local all = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return all
"""


@dataclass(frozen=True, slots=True)
class SweepResult:
    ejected: list[str]
    ended: list[str]
    held: list[str]


def _strs(items: Iterable[bytes | str]) -> list[str]:
    return [i.decode() if isinstance(i, bytes) else i for i in items]


class OutlierStore:
    def __init__(self, store: RegistryStore) -> None:
        self.redis = store.redis
        self.guard_bound_ms = store.guard_bound_ms
        self._sweep = lua.Script(store.redis, scripts.compose(SWEEP))
        self._take = lua.Script(store.redis, TAKE)

    @guarded
    async def take_outcomes(self, pool: str) -> dict[str, Outcomes]:
        """The counts added since the last call, which are reset: one
        atomic read-and-delete, so no increment is lost or counted twice."""
        flat = await self._take(keys=[keys.outcomes(pool)])
        return parse_outcomes(dict(zip(flat[0::2], flat[1::2], strict=True)))

    @guarded
    async def sweep(
        self,
        config: PoolConfig,
        verdicts: list[Verdict] | None,
        *,
        passed: Iterable[str] = (),
        max_share: float,
        actor: str = "outlier",
    ) -> SweepResult:
        """Ends ejections that are due; with `verdicts` (the end of an
        interval), ejects those backends within the limits and lowers the
        ejection count of the `passed` ones."""
        pool = config.name
        ejected, ended, held = await self._sweep(
            keys=scripts.pool_keys(pool),
            args=[
                pool,
                actor,
                "0" if verdicts is None else "1",
                json.dumps([[v.backend_id, v.detail[:200]] for v in verdicts or []]),
                json.dumps(sorted(passed)),
                int(max_share * 1000),
                config.outlier_detection.max_ejection_percent,
                config.outlier_detection.base_ejection_ms,
                config.outlier_detection.max_ejection_ms,
                self.guard_bound_ms,
            ],
        )
        return SweepResult(_strs(ejected), _strs(ended), _strs(held))
