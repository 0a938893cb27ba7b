"""The Lua scripts of lookaside.registry.scripts, in Python: the write half
of MemoryStore (lookaside.registry.memory).

Each twin takes the script's ARGV and returns what the script returns,
applying the same state machine table (lookaside.registry.machine) and the
same panic guard, so the operations of lookaside.registry.backend_ops run
unchanged over either.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lookaside.registry import keys
from lookaside.registry.backend_ops import BackendOps
from lookaside.registry.errors import Unavailable
from lookaside.registry.machine import HOLDS, TABLE, Actor, Event, Key, Outcome, key_of, stored

DEFAULT_GUARD_BOUND_MS = 180_000
Record = dict[str, Any]


@dataclass
class _Pool:
    config: str  # JSON, as stored
    backends: dict[str, Record] = field(default_factory=dict)
    leases: dict[str, int] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    panic_until: int = 0
    buckets: dict[int, Counter[str]] = field(default_factory=dict)
    total: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    streams: dict[str, str] = field(default_factory=dict)


def _key(b: Record | None) -> Key:
    return Key.ABSENT if b is None else key_of(b.get("state", "serving"), b.get("hold", ""))


def _foreign(b: Record, owner: str, now: int | None) -> bool:
    """The owner rule of the Lua prelude's foreign()."""
    held = b.get("owner") or ""
    if not owner or not held or held == owner:
        return False
    return now is None or int(b.get("lease_expires_ms") or 0) > now


def _shown(key: Key) -> str:
    return "absent" if key is Key.ABSENT else stored(key)[0]


class ScriptTwins(BackendOps):
    """The registry's scripts in Python, over plain dicts."""

    def __init__(
        self,
        *,
        guard_bound_ms: int = DEFAULT_GUARD_BOUND_MS,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.guard_bound_ms = guard_bound_ms
        self.clock = clock or (lambda: int(time.time() * 1000))
        self.available = True
        self._pools: dict[str, _Pool] = {}
        self._index_set: set[str] = set()
        self._versions: Counter[str] = Counter()  # outlive their pool, as in Redis
        self._config_versions: Counter[str] = Counter()
        self._holds: dict[str, dict[str, str]] = {}
        self._batches: set[str] = set()
        self._replicas: dict[str, int] = {}
        self._signals: dict[str, dict[str, str]] = {}  # the dashboard history per pool
        self._tokens: dict[str, dict[str, str]] = {}  # per-backend tokens: digest -> record
        self._subscribers: list[asyncio.Queue[str]] = []

    def _check(self) -> None:
        if not self.available:
            raise Unavailable("Redis failed (the in-memory registry is set unavailable)")

    # -- the scripts ---------------------------------------------------------

    async def _run(self, name: str, pool: str, args: list[Any], extra_keys: Any = ()) -> Any:
        self._check()
        return getattr(self, f"_script_{name.lower()}")(pool, [pool, *(str(a) for a in args)])

    async def _index(self, pool: str) -> None:
        self._check()
        self._index_set.add(pool)

    async def _reserve(self, pool: str, max_pools: int) -> Any:
        self._check()
        return self._script_reserve_pool(pool, [pool, str(max_pools)])

    async def _unindex(self, pool: str) -> None:
        self._check()
        if pool not in self._pools:
            self._index_set.discard(pool)

    def _changed(
        self, pool: str, now: int, kind: str, backend: str, actor: str, detail: str
    ) -> int:
        self._versions[pool] += 1
        v = self._versions[pool]
        self._log(pool, now, kind, backend, actor, detail, v)
        for q in self._subscribers:
            q.put_nowait(pool)
        return v

    def _log(
        self, pool: str, now: int, kind: str, backend: str, actor: str, detail: str, v: int
    ) -> None:
        events = self._pools[pool].events
        events.insert(0, {"ts_ms": now, "kind": kind, "backend": backend, "actor": actor,
                          "detail": detail, "version": v})  # fmt: skip
        del events[keys.EVENTS_MAX :]

    def _panic(self, pool: str, now: int, backend: str, actor: str, detail: str) -> None:
        p = self._pools[pool]
        if now >= p.panic_until:
            p.panic_until = now + 30_000
            self._log(pool, now, "panic", backend, actor, detail, self._versions[pool])

    def _guard(self, b: Record, now: int, over: bool, exempt: bool) -> bool:
        if not over or exempt:
            b["guard_since_ms"] = 0
            return False
        since = int(b.get("guard_since_ms") or 0)
        if since <= 0:
            b["guard_since_ms"] = now
            return True
        return now - since < self.guard_bound_ms

    def _step(self, pool: str, bid: str, b: Record, event: Event, now: int, actor: str,
              detail: str, over: bool) -> tuple[str, int, str]:  # fmt: skip
        p, rule = self._pools[pool], TABLE[event]
        cur = _key(b)
        to = rule.rows.get(cur)
        if to is None:
            return Outcome.REFUSED, 0, cur
        if to is cur:
            return Outcome.UNCHANGED, self._versions[pool], cur
        if rule.guarded and self._guard(b, now, over, False):
            if event is Event.HEALTH_FAIL:
                b["health_failing"] = True
            bound = self.guard_bound_ms
            self._panic(
                pool,
                now,
                bid,
                actor,
                f"{detail}; kept listed (panic guard, for at most {bound} ms)",
            )
            return Outcome.HELD, 0, cur
        if to is Key.ABSENT:
            p.backends.pop(bid, None)
            p.leases.pop(bid, None)
        else:
            b["state"], b["hold"] = stored(to)
            b["guard_since_ms"] = 0
        holds = self._holds.setdefault(pool, {})
        if to in HOLDS:
            holds[bid] = to.value
        elif rule.actor is Actor.OPERATOR:
            holds.pop(bid, None)
        text = detail or f"{_shown(cur)}->{_shown(to)}"
        return Outcome.CHANGED, self._changed(pool, now, rule.kind, bid, actor, text), cur

    def _script_register(self, pool: str, a: list[str]) -> list[Any]:
        actor, bid, raw, ttl, default, create, most = a[1:8]
        now = self.clock()
        if pool not in self._pools:
            if create != "1":
                return [Outcome.POOL_NOT_FOUND, 0, 0, now]
            self._pools[pool] = _Pool(default)
            self._config_versions[pool] += 1
        p = self._pools[pool]
        ttl_ms = int(ttl) or int(json.loads(p.config)["lease_ttl_ms"])
        old = p.backends.get(bid)
        if old is not None and old.get("static"):
            return [Outcome.STATIC_REFUSED, 0, 0, now]
        b = json.loads(raw)
        if old is not None and _foreign(old, b.get("owner") or "", now):
            return [Outcome.OWNER_REFUSED, 0, 0, now]
        if old is None and int(most) > 0 and len(p.backends) >= int(most):
            return [Outcome.FULL, len(p.backends), 0, now]
        cur = _key(old) if old is not None else Key(self._holds.get(pool, {}).get(bid, "absent"))
        if old is not None:
            for name, default_ in (
                ("ejections", 0),
                ("ejected_until_ms", 0),
                ("health_detail", ""),
            ):
                b[name] = old.get(name, default_)
        to = TABLE[Event.REGISTER].rows[cur]
        b["state"], b["hold"] = stored(to)
        b.update(registered_at_ms=now, last_heard_ms=now, lease_ttl_ms=ttl_ms,
                 lease_expires_ms=now + ttl_ms)  # fmt: skip
        p.backends[bid] = b
        p.leases[bid] = now + ttl_ms
        kind = "reregistered" if old is not None else "registered"
        text = f"{_shown(cur)}->{_shown(to)}: {b['ip']}:{b['port']}"
        return [Outcome.CHANGED, self._changed(pool, now, kind, bid, actor, text), ttl_ms, now]

    def _script_heartbeat(self, pool: str, a: list[str]) -> list[Any]:
        bid, lease, raw_load = a[2:5]
        owner = a[5] if len(a) > 5 else ""
        p = self._pools.get(pool)
        b = p.backends.get(bid) if p else None
        if p is None or b is None:
            return [Outcome.NOT_FOUND, 0]
        if b.get("static"):
            return [Outcome.STATIC_REFUSED, 0]
        if _foreign(b, owner, None):
            return [Outcome.OWNER_REFUSED, 0]
        if not lease or b.get("lease_id") != lease:
            return [Outcome.LEASE_REFUSED, 0]
        now = self.clock()
        ttl = int(b["lease_ttl_ms"])
        b.update(last_heard_ms=now, lease_expires_ms=now + ttl, guard_since_ms=0)
        if raw_load:
            figures = json.loads(raw_load)
            b["load"] = figures
            lat = float(figures.get("latency_ms") or 0)
            if lat > 0:
                e = float(b.get("latency_ewma_ms") or 0)
                e = lat if e <= 0 else e + 0.5 * (lat - e)
                b["latency_ewma_ms"] = e
                pub = float(b.get("latency_published_ms") or 0)
                if (pub <= 0 or abs(e - pub) > 0.2 * pub) and json.loads(p.config)[
                    "policy"
                ] == "least_loaded":
                    b["latency_published_ms"] = e
                    self._versions[pool] += 1
                    for q in self._subscribers:
                        q.put_nowait(pool)
        p.leases[bid] = now + ttl
        return [Outcome.CHANGED, ttl]

    def _script_step(self, pool: str, a: list[str]) -> list[Any]:
        actor, bid, event_name, lease, detail, share = a[1:7]
        event, now = Event(event_name), self.clock()
        p = self._pools.get(pool)
        b = p.backends.get(bid) if p else None
        if p is None or b is None:
            holds = self._holds.get(pool, {})
            if event is Event.OPERATOR_REMOVE and bid in holds:
                del holds[bid]
                return [
                    Outcome.CHANGED,
                    self._changed(pool, now, "hold_cleared", bid, actor, ""),
                    "absent",
                ]
            return [Outcome.NOT_FOUND, 0, "absent"]
        if TABLE[event].actor is Actor.SELF:
            if b.get("static"):
                return [Outcome.STATIC_REFUSED, 0, _key(b)]
            if _foreign(b, a[8] if len(a) > 8 else "", None):
                return [Outcome.OWNER_REFUSED, 0, _key(b)]
            if not lease or b.get("lease_id") != lease:
                return [Outcome.LEASE_REFUSED, 0, _key(b)]
        over = False
        if TABLE[event].guarded:
            states = [x.get("state") for x in p.backends.values()]
            total, faulty = len(states), sum(s in ("unhealthy", "ejected") for s in states)
            over = (faulty + 1) * 1000 > int(share) * total
            if over:
                detail += f" but {faulty} of {total} backends are already unhealthy or ejected"
        if event in (Event.HEALTH_FAIL, Event.HEALTH_PASS):
            if event is Event.HEALTH_PASS:
                b["health_failing"] = False
            b["health_detail"] = a[5]
        return list(self._step(pool, bid, b, event, now, actor, detail, over))

    def _script_put_hold(self, pool: str, a: list[str]) -> list[Any]:
        actor, bid, hold = a[1:4]
        p = self._pools.get(pool)
        if p is None:
            return [Outcome.POOL_NOT_FOUND, 0, "absent"]
        now = self.clock()
        b = p.backends.get(bid)
        if b is not None:
            event = Event.OPERATOR_DRAIN if hold == Key.DRAINED else Event.OPERATOR_DISABLE
            return list(self._step(pool, bid, b, event, now, actor, "", False))
        holds = self._holds.setdefault(pool, {})
        if holds.get(bid) == hold:
            return [Outcome.UNCHANGED, self._versions[pool], "absent"]
        holds[bid] = hold
        return [Outcome.CHANGED, self._changed(pool, now, "hold_set", bid, actor, hold), "absent"]

    def _script_reap(self, pool: str, a: list[str]) -> list[Any]:
        share, now = int(a[2]), self.clock()
        before = int(a[4]) if len(a) > 4 else 0
        upto = min(now, before) if before > 0 else now
        p = self._pools.get(pool)
        if p is None:
            return [[], []]
        due = sorted(bid for bid, deadline in p.leases.items() if deadline <= upto)
        cands = []
        for bid in due:
            b = p.backends.get(bid)
            if b is None or b.get("static"):
                p.leases.pop(bid, None)
            else:
                cands.append(bid)
        if not cands:
            return [[], []]
        total = len(p.backends)

        def exempt(bid: str) -> bool:
            return (
                p.backends[bid].get("state") == "unhealthy"
                or p.backends[bid].get("health_failing") is True
            )

        guarded = sum(not exempt(bid) for bid in cands)
        over = guarded > 1 and guarded * 1000 > share * total
        removed, held = [], []
        for bid in cands:
            if self._guard(p.backends[bid], now, over, exempt(bid)):
                held.append(bid)
            else:
                del p.backends[bid]
                p.leases.pop(bid, None)
                removed.append(bid)
        if held:
            self._panic(pool, now, ",".join(held), "lease", f"{len(cands)} of {total} leases expired "
                        f"at once; kept listed for at most {self.guard_bound_ms} ms")  # fmt: skip
        if removed:
            self._changed(pool, now, "expired", ",".join(removed), "lease", "")
        return [removed, held]

    def _script_update_backend(self, pool: str, a: list[str]) -> list[Any]:
        actor, bid, patch, kind = a[1:5]
        p = self._pools.get(pool)
        if p is None or bid not in p.backends:
            return [Outcome.NOT_FOUND, 0]
        p.backends[bid].update(json.loads(patch))
        return [Outcome.CHANGED, self._changed(pool, self.clock(), kind, bid, actor, patch)]

    def _script_put_static(self, pool: str, a: list[str]) -> list[Any]:
        actor, bid, raw = a[1:4]
        p = self._pools.get(pool)
        if p is None:
            return [Outcome.POOL_NOT_FOUND, 0]
        if bid in p.backends:
            return [Outcome.CONFLICT, 0]
        cur = Key(self._holds.get(pool, {}).get(bid, "absent"))
        now, b = self.clock(), json.loads(raw)
        to = TABLE[Event.STATIC_ADD].rows[cur]
        b["state"], b["hold"] = stored(to)
        b.update(registered_at_ms=now, last_heard_ms=now)
        p.backends[bid] = b
        text = f"{_shown(cur)}->{_shown(to)}"
        return [Outcome.CHANGED, self._changed(pool, now, "static_registered", bid, actor, text)]

    def _script_put_config(self, pool: str, a: list[str]) -> list[Any]:
        actor, raw, mode, expected = a[1:5]
        exists, cv = pool in self._pools, self._config_versions[pool]
        if (mode == "absent" and exists) or (expected and int(expected) != cv):
            return [Outcome.CONFLICT, cv, 0]
        if mode == "exists" and not exists:
            return [Outcome.NOT_FOUND, cv, 0]
        if exists:
            self._pools[pool].config = raw
        else:
            self._pools[pool] = _Pool(raw)
        self._config_versions[pool] += 1
        v = self._changed(pool, self.clock(), "pool_configured", "", actor, raw)
        return [Outcome.CHANGED, self._config_versions[pool], v]

    def _script_reserve_pool(self, pool: str, a: list[str]) -> list[Any]:
        if pool in self._index_set:
            return [Outcome.CHANGED, 0]
        n = len(self._index_set)
        if n >= int(a[1]):
            return [Outcome.CONFLICT, n]
        self._index_set.add(pool)
        return [Outcome.CHANGED, n + 1]

    def _script_delete_pool(self, pool: str, a: list[str]) -> list[Any]:
        p = self._pools.get(pool)
        if p is None:
            return [Outcome.NOT_FOUND, 0]
        now = self.clock()
        live = sum(1 for b in p.backends.values()
                   if b.get("static") or int(b.get("lease_expires_ms") or 0) > now)  # fmt: skip
        if live and a[2] != "1":
            return [Outcome.CONFLICT, live]
        del self._pools[pool]
        self._holds.pop(pool, None)
        self._tokens.pop(pool, None)
        self._signals.pop(pool, None)
        self._config_versions[pool] += 1
        self._versions[pool] += 1
        for q in self._subscribers:
            q.put_nowait(pool)
        return [Outcome.CHANGED, live]

    def _script_mint_token(self, pool: str, a: list[str]) -> list[Any]:
        actor, digest, raw = a[1:4]
        if pool not in self._pools:
            return [Outcome.POOL_NOT_FOUND]
        self._tokens.setdefault(pool, {})[digest] = raw
        t = json.loads(raw)
        self._log(pool, self.clock(), "backend_token_minted", "", actor,
                  f"{t['id']} for {t['address']}", self._versions[pool])  # fmt: skip
        return [Outcome.CHANGED]

    def _script_revoke_token(self, pool: str, a: list[str]) -> list[Any]:
        actor, token_id = a[1:3]
        tokens = self._tokens.get(pool, {})
        for digest, raw in list(tokens.items()):
            t = json.loads(raw)
            if t["id"] == token_id:
                del tokens[digest]
                self._log(pool, self.clock(), "backend_token_revoked", "", actor,
                          f"{t['id']} for {t['address']}", self._versions[pool])  # fmt: skip
                return [Outcome.CHANGED]
        return [Outcome.NOT_FOUND]
