"""Operator state changes of one backend, checked and applied atomically.

`RegistryStore.update_backend` writes whatever it is given. An operator's
drain or enable must instead depend on the state the backend is in *now*
(undraining a backend that health checking marked unhealthy would put a
broken backend back in lists), so the check and the write are one Lua
script. Like every registry write, a change bumps the pool version,
appends an event and publishes the pool on the change channel; asking for
the state a backend is already in changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from lookaside.registry import keys, scripts
from lookaside.registry.model import BackendState
from lookaside.registry.store import RegistryStore
from lookaside.registry.validation import NotFoundError

# KEYS: backends version events
# ARGV: id, target state, allowed current states (JSON list), pool, actor, kind
TRANSITION = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return {0, 0, ''} end
local b = cjson.decode(raw)
local current = b['state'] or 'serving'
if current == ARGV[2] then
  return {2, tonumber(redis.call('GET', KEYS[2]) or '0'), current}
end
local allowed = false
for _, s in ipairs(cjson.decode(ARGV[3])) do
  if s == current then allowed = true end
end
if not allowed then return {-1, 0, current} end
b['state'] = ARGV[2]
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(b))
local v = changed(KEYS[2], KEYS[3], ARGV[4], now_ms(), ARGV[6], ARGV[1], ARGV[5],
  current .. '->' .. ARGV[2])
return {1, v, current}
"""


class TransitionRefused(Exception):
    """The backend is in a state the change does not start from."""

    def __init__(self, message: str, current: BackendState | str) -> None:
        super().__init__(message)
        self.current = current


@dataclass(frozen=True, slots=True)
class Transition:
    """A named operator action: the state it leads to and where it may start."""

    kind: str
    target: BackendState
    allowed_from: tuple[BackendState, ...]
    hint: str


S = BackendState
DRAIN = Transition("drained", S.DRAINING, (S.SERVING,), "only a serving backend can be drained")
UNDRAIN = Transition(
    "undrained", S.SERVING, (S.DRAINING,), "only a draining backend can be undrained"
)
DISABLE = Transition("disabled", S.DISABLED, (S.SERVING, S.DRAINING, S.UNHEALTHY, S.EJECTED), "")
REINSTATE = Transition(
    "reinstated", S.SERVING, (S.EJECTED,), "only an ejected backend can be reinstated"
)
ENABLE = Transition("enabled", S.SERVING, (S.DISABLED,), "only a disabled backend can be enabled")


@dataclass(frozen=True, slots=True)
class TransitionResult:
    version: int
    previous: str
    changed: bool


class BackendTransitions:
    """Runs Transitions against one RegistryStore's Redis."""

    def __init__(self, store: RegistryStore) -> None:
        self._script = store.redis.register_script(scripts.compose(TRANSITION))

    async def apply(
        self, pool: str, backend_id: str, transition: Transition, *, actor: str
    ) -> TransitionResult:
        status, version, current = await self._script(
            keys=[keys.backends(pool), keys.version(pool), keys.events(pool)],
            args=[
                backend_id,
                transition.target.value,
                json.dumps([s.value for s in transition.allowed_from]),
                pool,
                actor,
                transition.kind,
            ],
        )
        current = current.decode() if isinstance(current, bytes) else str(current)
        if status == 0:
            raise NotFoundError(f"backend {backend_id} is not registered in pool {pool!r}")
        if status == -1:
            hint = f"; {transition.hint}" if transition.hint else ""
            raise TransitionRefused(
                f"backend {backend_id} in pool {pool!r} is {current}: cannot move it to "
                f"{transition.target.value}{hint}",
                current,
            )
        return TransitionResult(int(version), current, status == 1)
