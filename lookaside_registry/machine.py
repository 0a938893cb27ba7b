"""The backend state machine: every state change of a backend, by every
actor, is a row of one table.

The table is written once, here. `lua_table()` renders it for the Lua
prelude (lookaside_registry.scripts) that every registry write runs, in
Redis and in the in-memory twin alike, and the docs read the same `TABLE`. docs/state-machine.md
shows it as states x actors.

A backend is in one of the `Key` states. DRAINED is DRAINING set by an
operator (a hold, like DISABLED); ABSENT means no record. An operator's
hold is also kept apart from the record, so that it outlives a
deregistration or an expired lease and is applied again when the backend
registers again.

Rules that are not a plain row:
- Self-registration (actor SELF) never touches a static backend, and
  Heartbeat, Drain and Deregister must carry the lease id Register returned.
- A live lease belongs to the registrant that took it (its `owner`): a
  Register of the same address, a Heartbeat, Drain or Deregister by
  another principal is refused while the lease lasts. Operators are not
  bound by it.
- Lease expiry never applies to static backends (they have no lease).
- Guarded events (a removal because of a fault) go through the panic guard:
  when too much of the pool would be out, the change is held, for at most
  the pool's guard bound, and never for a backend that fails its health
  checks.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass


class Key(enum.StrEnum):
    ABSENT = "absent"
    SERVING = "serving"
    DRAINING = "draining"
    DRAINED = "drained"  # draining, by an operator's hold
    DISABLED = "disabled"
    UNHEALTHY = "unhealthy"
    EJECTED = "ejected"


HOLDS = (Key.DRAINED, Key.DISABLED)


class Actor(enum.StrEnum):
    SELF = "self"  # the backend itself, over the Registry API
    LEASE = "lease"  # lease expiry (the reaper)
    HEALTH = "health"  # active health checking
    OUTLIER = "outlier"  # outlier detection
    OPERATOR = "operator"  # the admin API
    STATIC = "static"  # an operator's static registration


class Event(enum.StrEnum):
    REGISTER = "register"
    HEARTBEAT = "heartbeat"
    DRAIN = "drain"
    DEREGISTER = "deregister"
    EXPIRE = "expire"
    HEALTH_FAIL = "health_fail"
    HEALTH_PASS = "health_pass"
    EJECT = "eject"
    EJECTION_END = "ejection_end"
    OPERATOR_DRAIN = "operator_drain"
    OPERATOR_UNDRAIN = "operator_undrain"
    OPERATOR_DISABLE = "operator_disable"
    OPERATOR_ENABLE = "operator_enable"
    OPERATOR_REINSTATE = "operator_reinstate"
    OPERATOR_REMOVE = "operator_remove"
    STATIC_ADD = "static_add"


class Outcome(enum.StrEnum):
    """What a write did; the Lua scripts return these names."""

    CHANGED = "changed"
    UNCHANGED = "unchanged"
    NOT_FOUND = "not_found"
    POOL_NOT_FOUND = "pool_not_found"
    REFUSED = "refused"  # no row from the current state
    LEASE_REFUSED = "lease"  # missing or stale lease id
    STATIC_REFUSED = "static"  # self-registration against a static backend
    HELD = "held"  # the panic guard kept the backend as it was
    CONFLICT = "conflict"  # exists already / still live / version moved
    FULL = "full"  # the pool has the most backends a registration may add to
    OWNER_REFUSED = "owner"  # a live lease taken by another registrant


@dataclass(frozen=True, slots=True)
class Rule:
    actor: Actor
    kind: str  # the event log's name for the change
    rows: dict[Key, Key]  # from -> to; a state not listed refuses the event
    guarded: bool = False
    hint: str = ""


S = Key
_ALL_PRESENT = (S.SERVING, S.DRAINING, S.DRAINED, S.DISABLED, S.UNHEALTHY, S.EJECTED)


def _same(*states: Key) -> dict[Key, Key]:
    return {s: s for s in states}


TABLE: dict[Event, Rule] = {
    Event.REGISTER: Rule(
        Actor.SELF,
        "registered",
        {
            S.ABSENT: S.SERVING,
            S.SERVING: S.SERVING,
            S.DRAINING: S.SERVING,  # a restart after the backend's own drain
            S.UNHEALTHY: S.SERVING,  # health checking judges it again
            **_same(S.DRAINED, S.DISABLED, S.EJECTED),  # holds and ejections survive
        },
    ),
    Event.HEARTBEAT: Rule(Actor.SELF, "heartbeat", _same(*_ALL_PRESENT)),
    Event.DRAIN: Rule(
        Actor.SELF,
        "draining",
        {
            S.SERVING: S.DRAINING,
            S.UNHEALTHY: S.DRAINING,
            S.EJECTED: S.DRAINING,
            **_same(S.DRAINING, S.DRAINED, S.DISABLED),
        },
    ),
    Event.DEREGISTER: Rule(
        Actor.SELF, "deregistered", {s: S.ABSENT for s in _ALL_PRESENT}
    ),  # an operator's hold is kept apart and outlives this
    Event.EXPIRE: Rule(Actor.LEASE, "expired", {s: S.ABSENT for s in _ALL_PRESENT}, guarded=True),
    Event.HEALTH_FAIL: Rule(
        Actor.HEALTH,
        "unhealthy",
        {
            S.SERVING: S.UNHEALTHY,
            **_same(S.DRAINING, S.DRAINED, S.DISABLED, S.UNHEALTHY, S.EJECTED),
        },
        guarded=True,
    ),
    Event.HEALTH_PASS: Rule(
        Actor.HEALTH,
        "healthy",
        {S.UNHEALTHY: S.SERVING, **_same(S.SERVING, S.DRAINING, S.DRAINED, S.DISABLED, S.EJECTED)},
    ),
    Event.EJECT: Rule(
        Actor.OUTLIER,
        "ejected",
        {S.SERVING: S.EJECTED, **_same(S.DRAINING, S.DRAINED, S.DISABLED, S.UNHEALTHY, S.EJECTED)},
        guarded=True,
    ),
    Event.EJECTION_END: Rule(
        Actor.OUTLIER,
        "ejection_ended",
        {S.EJECTED: S.SERVING, **_same(S.SERVING, S.DRAINING, S.DRAINED, S.DISABLED, S.UNHEALTHY)},
    ),
    Event.OPERATOR_DRAIN: Rule(
        Actor.OPERATOR,
        "drained",
        {S.SERVING: S.DRAINED, S.DRAINING: S.DRAINED, S.DRAINED: S.DRAINED},
        hint="only a serving or draining backend can be drained",
    ),
    Event.OPERATOR_UNDRAIN: Rule(
        Actor.OPERATOR,
        "undrained",
        {S.DRAINED: S.SERVING, S.DRAINING: S.SERVING, S.SERVING: S.SERVING},
        hint="only a draining backend can be undrained",
    ),
    Event.OPERATOR_DISABLE: Rule(Actor.OPERATOR, "disabled", {s: S.DISABLED for s in _ALL_PRESENT}),
    Event.OPERATOR_ENABLE: Rule(
        Actor.OPERATOR,
        "enabled",
        {S.DISABLED: S.SERVING, S.SERVING: S.SERVING},
        hint="only a disabled backend can be enabled",
    ),
    Event.OPERATOR_REINSTATE: Rule(
        Actor.OPERATOR,
        "reinstated",
        {S.EJECTED: S.SERVING, S.SERVING: S.SERVING},
        hint="only an ejected backend can be reinstated",
    ),
    Event.OPERATOR_REMOVE: Rule(
        Actor.OPERATOR, "removed", {s: S.ABSENT for s in _ALL_PRESENT}
    ),  # also clears the hold
    Event.STATIC_ADD: Rule(
        Actor.STATIC,
        "static_registered",
        {S.ABSENT: S.SERVING, **_same(S.DRAINED, S.DISABLED)},
        hint="the address is already registered; change its weight or remove it first",
    ),
}


def target(event: Event) -> Key:
    """Where an event leads (the state most of its rows move to)."""
    moves = [to for frm, to in TABLE[event].rows.items() if to is not frm]
    return max(set(moves), key=moves.count) if moves else Key.SERVING


def shown(key: Key) -> str:
    """The state name a machine state is shown and stored as."""
    return stored(key)[0]


def next_key(event: Event, current: Key) -> Key | None:
    """The state `event` moves a backend in `current` to, or None when the
    table refuses it."""
    return TABLE[event].rows.get(current)


def key_of(state: str, hold: str) -> Key:
    """The machine state of a stored backend (its `state` and `hold`)."""
    if hold == Key.DRAINED:
        return Key.DRAINED
    return Key(state)


def stored(key: Key) -> tuple[str, str]:
    """The (state, hold) fields a backend in `key` is stored with."""
    if key is Key.DRAINED:
        return "draining", "drained"
    if key is Key.DISABLED:
        return "disabled", "disabled"
    return key.value, ""


def lua_table() -> str:
    """The table as JSON for the Lua prelude: {event: {actor, kind,
    guarded, rows: {from: to}}}."""
    data = {
        ev.value: {
            "actor": rule.actor.value,
            "kind": rule.kind,
            "guarded": rule.guarded,
            "rows": {k.value: v.value for k, v in rule.rows.items()},
        }
        for ev, rule in TABLE.items()
    }
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def markdown_table() -> str:
    """States x events (grouped by actor), for docs/state-machine.md."""
    states = [k for k in Key]
    head = "| actor | event | " + " | ".join(s.value for s in states) + " |"
    sep = "|---|---|" + "---|" * len(states)
    lines = [head, sep]
    for ev, rule in TABLE.items():
        cells = []
        for s in states:
            to = rule.rows.get(s)
            cells.append("-" if to is None else ("=" if to is s else to.value))
        guard = " (guarded)" if rule.guarded else ""
        lines.append(f"| {rule.actor.value} | {ev.value}{guard} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
