"""Operator actions on one backend: named events of the state machine
(lookaside_registry.machine), checked against the backend's current state
in the same script that changes it. Asking for the state a backend is
already in changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from lookaside_registry.errors import TransitionRefused
from lookaside_registry.machine import TABLE, Event
from lookaside_registry.port import TransitionPort

__all__ = [
    "DISABLE",
    "DRAIN",
    "ENABLE",
    "REINSTATE",
    "UNDRAIN",
    "BackendTransitions",
    "Transition",
    "TransitionRefused",
    "TransitionResult",
]


@dataclass(frozen=True, slots=True)
class Transition:
    """A named operator action: its event and the event log's name for it."""

    event: Event

    @property
    def kind(self) -> str:
        return TABLE[self.event].kind


DRAIN = Transition(Event.OPERATOR_DRAIN)
UNDRAIN = Transition(Event.OPERATOR_UNDRAIN)
DISABLE = Transition(Event.OPERATOR_DISABLE)
REINSTATE = Transition(Event.OPERATOR_REINSTATE)
ENABLE = Transition(Event.OPERATOR_ENABLE)


@dataclass(frozen=True, slots=True)
class TransitionResult:
    version: int
    previous: str
    changed: bool


class BackendTransitions:
    """Runs operator Transitions against one store."""

    def __init__(self, store: TransitionPort) -> None:
        self.store = store

    async def apply(
        self, pool: str, backend_id: str, transition: Transition, *, actor: str
    ) -> TransitionResult:
        result = await self.store.operate(pool, backend_id, transition.event, actor=actor)
        return TransitionResult(result.version, result.previous, result.changed)
