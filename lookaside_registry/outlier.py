"""Outlier detection: ejecting backends that lose their callers' calls.

The evidence is what clients report per backend: calls finished, those
known to have reached the backend, those that failed to send, and those
that ended in DEADLINE_EXCEEDED. A call that finished without reaching it
(failed to send, reset, or timed out with nothing from the server) counts
against the backend. Front ends add these counts to the pool's `outcomes`
hash as running totals that no reader resets: the dashboard, the metrics
and the judge each keep their own previous reading and take differences.

The replica that owns the pool judges once per `outlier_interval_ms`, on
the difference between the evidence totals now and at its previous
judgement (kept in the pool's `outcomes:judged` hash, so another replica
taking over carries on). Evidence counts come only from streams whose
reports may eject (docs/security.md: a pool that requires client
credentials counts its anonymous streams for display only), capped per
stream by the calls it was plausibly handed (balancer_server.report_ingest).

The judgements, with the two algorithms of gRFC A50:

- failure percentage: a backend with more than `outlier_failure_percent`
  of its calls lost;
- success rate: a backend whose share of delivered calls is below the
  pool's mean by more than `outlier_stdev_factor`/1000 standard deviations;

both over backends with at least `outlier_request_volume` calls in the
interval, judging no one when fewer than `outlier_min_hosts` backends
qualify; and

- timeouts: a backend all of whose calls in the interval ended in
  DEADLINE_EXCEEDED, at any volume (a hanging backend holds each call for
  its whole deadline, so it never reaches the volume);
- latency (off unless `outlier_latency_factor` > 0): a backend whose own
  reported mean latency is more than that factor times the median of the
  pool's other serving backends (at least `outlier_min_hosts` reporting).

Agreement: a verdict from reported outcomes ejects only when at least
`outlier_min_reporters` distinct client streams reported lost calls or
timeouts against that backend in the interval (the pool's `accusers`), so
one lying stream cannot eject anyone. The latency verdict rests on the
backend's own word and needs no agreement.

An ejection lasts base x (number of ejections in a row), capped at
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
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from lookaside_registry import keys, lua, scripts
from lookaside_registry.errors import guarded
from lookaside_registry.model import BackendState, PoolConfig, PoolSnapshot

# Fields of the outcomes hash: "<backend id>:<suffix>", running totals.
FINISHED = "f"
RECEIVED = "r"
FAILED_TO_SEND = "s"
DEADLINE_EXCEEDED = "d"
# The same counts from the streams whose reports may eject ("evidence").
EVIDENCE = "e"
_SUFFIXES = (FINISHED, RECEIVED, FAILED_TO_SEND, DEADLINE_EXCEEDED)
# The judge's field of the time it judged, in outcomes:judged.
JUDGED_AT = "@at"
# Accusations older than this are dropped from the accusers set.
ACCUSERS_KEEP_MS = 10 * 60 * 1000
# Outcome counters of a pool nobody reports on expire after this.
OUTCOMES_TTL_SECONDS = 10 * 60


@dataclass(frozen=True, slots=True)
class Outcomes:
    """Calls that clients finished on one backend (a total or a difference)."""

    finished: int = 0
    received: int = 0
    failed_to_send: int = 0
    deadline_exceeded: int = 0

    @property
    def lost(self) -> int:
        return max(0, self.finished - self.received)

    @property
    def all_timed_out(self) -> bool:
        return self.finished > 0 and self.deadline_exceeded >= self.finished

    def minus(self, before: Outcomes) -> Outcomes:
        """The calls since `before`; totals that went down were started
        again (the hash expired), so they count whole."""
        if self.finished < before.finished:
            return self
        return Outcomes(
            self.finished - before.finished,
            max(0, self.received - before.received),
            max(0, self.failed_to_send - before.failed_to_send),
            max(0, self.deadline_exceeded - before.deadline_exceeded),
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    backend_id: str
    detail: str


def outcome_fields(
    backend_id: str,
    finished: int,
    received: int,
    failed: int,
    deadline: int = 0,
    *,
    evidence: bool = False,
) -> dict[str, int]:
    """The increments one report adds to a pool's outcomes hash (display
    counts, or with `evidence` the counts that may eject)."""
    pre = EVIDENCE if evidence else ""
    return {
        f"{backend_id}:{pre}{FINISHED}": finished,
        f"{backend_id}:{pre}{RECEIVED}": received,
        f"{backend_id}:{pre}{FAILED_TO_SEND}": failed,
        f"{backend_id}:{pre}{DEADLINE_EXCEEDED}": deadline,
    }


def parse_outcomes(
    raw: Mapping[Any, bytes | str | int], *, evidence: bool = False
) -> dict[str, Outcomes]:
    """The display counts of an outcomes hash (or with `evidence`, the
    counts that may eject), per backend."""
    pre = EVIDENCE if evidence else ""
    parts: dict[str, dict[str, int]] = {}
    for k, v in raw.items():
        key = k.decode() if isinstance(k, bytes) else k
        backend_id, _, suffix = key.rpartition(":")
        if backend_id and suffix.startswith(pre) and suffix[len(pre) :] in _SUFFIXES:
            parts.setdefault(backend_id, {})[suffix[len(pre) :]] = int(v)
    return {
        bid: Outcomes(
            p.get(FINISHED, 0),
            p.get(RECEIVED, 0),
            p.get(FAILED_TO_SEND, 0),
            p.get(DEADLINE_EXCEEDED, 0),
        )  # fmt: skip
        for bid, p in parts.items()
        if p.get(FINISHED, 0) > 0 or any(p.values())
    }


def differences(
    now: Mapping[str, Outcomes], before: Mapping[str, Outcomes] | None
) -> dict[str, Outcomes]:
    """Per backend, the calls between two readings of the running totals."""
    before = before or {}
    out = {}
    for bid, o in now.items():
        d = o.minus(before.get(bid, Outcomes()))
        if d.finished > 0:
            out[bid] = d
    return out


def qualified(outcomes: Mapping[str, Outcomes], config: PoolConfig) -> dict[str, Outcomes]:
    """The backends with enough calls in the interval to be judged."""
    volume = max(1, config.outlier_detection.request_volume)
    return {bid: o for bid, o in outcomes.items() if o.finished >= volume}


def judge(
    outcomes: Mapping[str, Outcomes],
    config: PoolConfig,
    accusers: Mapping[str, int] | None = None,
) -> list[Verdict]:
    """The backends that this interval's outcomes mark as outliers. With
    `accusers` (distinct streams that reported lost calls per backend),
    only backends that at least `min_reporters` streams accuse are."""
    od = config.outlier_detection
    out: dict[str, str] = {}
    qualified_ = qualified(outcomes, config)
    if len(qualified_) >= max(1, od.min_hosts):
        if od.stdev_factor > 0:
            rates = {bid: o.received / o.finished for bid, o in qualified_.items()}
            mean = sum(rates.values()) / len(rates)
            stdev = math.sqrt(sum((r - mean) ** 2 for r in rates.values()) / len(rates))
            floor = mean - stdev * od.stdev_factor / 1000
            for bid, rate in rates.items():
                if rate < floor:
                    out[bid] = (
                        f"success rate {rate:.1%} below {floor:.1%} "
                        f"(pool mean {mean:.1%}, stdev {stdev:.1%})"
                    )
        if od.failure_percent > 0:
            for bid, o in qualified_.items():
                if bid not in out and o.lost * 100 > od.failure_percent * o.finished:
                    out[bid] = (
                        f"{o.lost} of {o.finished} calls lost "
                        f"({o.failed_to_send} failed to send), over {od.failure_percent}%"
                    )
    for bid, o in outcomes.items():
        if bid not in out and o.all_timed_out:
            out[bid] = f"all {o.finished} calls timed out (deadline exceeded)"
    if accusers is not None:
        need = max(1, od.min_reporters)
        out = {
            bid: f"{detail}; reported by {accusers.get(bid, 0)} client streams"
            for bid, detail in out.items()
            if accusers.get(bid, 0) >= need
        }
    return [Verdict(bid, detail) for bid, detail in sorted(out.items())]


def unagreed(
    outcomes: Mapping[str, Outcomes], config: PoolConfig, accusers: Mapping[str, int]
) -> list[str]:
    """The backends the outcomes alone would eject but too few streams accuse."""
    agreed = {v.backend_id for v in judge(outcomes, config, accusers)}
    return [v.backend_id for v in judge(outcomes, config) if v.backend_id not in agreed]


def judge_latency(snapshot: PoolSnapshot, config: PoolConfig) -> list[Verdict]:
    """Backends whose own mean latency is more than `latency_factor` times
    the median of the pool's other serving backends (off at factor 0)."""
    od = config.outlier_detection
    if od.latency_factor <= 0:
        return []
    latencies = {
        b.id: b.latency_ewma_ms
        for b in snapshot.backends
        if b.state is BackendState.SERVING and b.latency_ewma_ms > 0
    }
    if len(latencies) < max(2, od.min_hosts):
        return []
    out = []
    for bid, latency in sorted(latencies.items()):
        median = statistics.median(v for k, v in latencies.items() if k != bid)
        if median > 0 and latency > od.latency_factor * median:
            out.append(
                Verdict(
                    bid,
                    f"mean latency {latency:.0f} ms over {od.latency_factor}x the pool's "
                    f"median {median:.0f} ms",
                )
            )
    return out


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


# KEYS: outcomes, outcomes:judged, accusers, backends
# ARGV: interval ms (the look-back for accusations when never judged), ttl s
# The judge's reading: the outcomes totals now, the totals at its previous
# judgement and when that was, and the streams that accused each backend
# since; then the totals now become the judged ones. Counters of backends
# that are gone are dropped (no one reads them any more). Only the judge
# writes outcomes:judged: other readers keep their own previous reading.
JUDGE_READ = """
local t = redis.call('TIME')
-- ms with the microseconds as a fraction, as accusations are stamped
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local cur = redis.call('HGETALL', KEYS[1])
local before = redis.call('HGETALL', KEYS[2])
local since = now - tonumber(ARGV[1])
for i = 1, #before, 2 do
  if before[i] == '@JUDGED_AT@' then since = tonumber(before[i + 1]) end
end
-- strictly after the previous judgement (%.3f: Lua's tostring keeps 14 digits)
local accused = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. string.format('%.3f', since), '+inf')
local keep, gone = {}, {}
for i = 1, #cur, 2 do
  local bid = string.match(cur[i], '^(.*):[^:]*$')
  if bid and redis.call('HEXISTS', KEYS[4], bid) == 1 then
    table.insert(keep, cur[i])
    table.insert(keep, cur[i + 1])
  else
    table.insert(gone, cur[i])
  end
end
for i = 1, #gone, 500 do
  redis.call('HDEL', KEYS[1], unpack(gone, i, math.min(i + 499, #gone)))
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], '@JUDGED_AT@', string.format('%.3f', now))
for i = 1, #keep, 500 do
  redis.call('HSET', KEYS[2], unpack(keep, i, math.min(i + 499, #keep)))
end
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
return {cur, before, accused, now}
""".replace("@JUDGED_AT@", JUDGED_AT)


@dataclass(frozen=True, slots=True)
class Reading:
    """What the judge reads at the end of an interval."""

    evidence: dict[str, Outcomes]  # since the previous judgement (or ever, the first time)
    accusers: dict[str, int]  # distinct streams per backend since then


def count_accusers(members: Iterable[bytes | str]) -> dict[str, int]:
    """Accusers set members ("<backend id>|<stream>") -> streams per backend."""
    streams: dict[str, set[str]] = {}
    for m in members:
        text = m.decode() if isinstance(m, bytes) else m
        bid, _, stream = text.partition("|")
        streams.setdefault(bid, set()).add(stream)
    return {bid: len(s) for bid, s in streams.items()}


@dataclass(frozen=True, slots=True)
class SweepResult:
    ejected: list[str]
    ended: list[str]
    held: list[str]


def _pairs(flat: list[Any]) -> dict[Any, Any]:
    return dict(zip(flat[0::2], flat[1::2], strict=True))


def _strs(items: Iterable[bytes | str]) -> list[str]:
    return [i.decode() if isinstance(i, bytes) else i for i in items]


class _Host(Protocol):
    """What OutlierStore takes from the Redis adapter that owns it."""

    redis: Any
    guard_bound_ms: int


class OutlierStore:
    def __init__(self, store: _Host) -> None:
        self.redis = store.redis
        self.guard_bound_ms = store.guard_bound_ms
        self._sweep = lua.Script(store.redis, scripts.compose(SWEEP))
        self._judge_read = lua.Script(store.redis, JUDGE_READ)

    @guarded
    async def read_interval(self, pool: str, interval_ms: int) -> Reading:
        """The evidence since the previous judgement and who accused whom;
        the totals now become the judged ones (nothing else is reset)."""
        cur, before, accused, _now = await self._judge_read(
            keys=[
                keys.outcomes(pool),
                keys.outcomes_judged(pool),
                keys.accusers(pool),
                keys.backends(pool),
            ],
            args=[interval_ms, OUTCOMES_TTL_SECONDS],
        )
        now = parse_outcomes(_pairs(cur), evidence=True)
        then = parse_outcomes(_pairs(before), evidence=True)
        return Reading(differences(now, then), count_accusers(accused))

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
