"""Health verdicts of backends, written by the replica that probes them.

A verdict is a state machine event (lookaside_registry.machine): a failure
moves only a SERVING backend to UNHEALTHY and a pass only an UNHEALTHY one
back; a drained, disabled or ejected backend stays as it is. A failure that
would leave more than `max_share` of the pool unhealthy or ejected is held
by the panic guard, for at most the store's guard bound; a held failure is
remembered on the backend, so that its lease expiry is not held.
"""

from __future__ import annotations

from lookaside_registry.errors import NotFound
from lookaside_registry.machine import Event, Outcome
from lookaside_registry.port import HealthPort


class HealthStore:
    def __init__(self, store: HealthPort) -> None:
        self.store = store

    async def set_health(
        self,
        pool: str,
        backend_id: str,
        healthy: bool,
        *,
        max_share: float = 0.5,
        actor: str = "health",
        detail: str = "",
    ) -> Outcome:
        """CHANGED, UNCHANGED, HELD (panic guard) or NOT_FOUND."""
        event = Event.HEALTH_PASS if healthy else Event.HEALTH_FAIL
        try:
            result = await self.store.step(
                pool, backend_id, event, actor=actor, detail=detail, max_share=max_share
            )
        except NotFound:
            return Outcome.NOT_FOUND
        return result.outcome
