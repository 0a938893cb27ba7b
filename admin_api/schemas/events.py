"""The per-pool event log: registrations, expiries and operator actions."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class EventOut(BaseModel):
    ts_ms: int = Field(description="Unix ms, from the Redis clock")
    kind: str = Field(
        description="registered, expired, drained, weight_changed, pool_configured, ..."
    )
    backend: str = Field(description="backend id(s), empty for pool-wide events")
    actor: str = Field(
        description="who did it: registration, lease, admin:token@<client address>, ..."
    )
    detail: str
    version: int = Field(description="the pool version the event produced")

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> EventOut:
        def text(key: str) -> str:
            value = raw.get(key, "")
            return value if isinstance(value, str) else ("" if value is None else str(value))

        def number(key: str) -> int:
            value = raw.get(key, 0)
            return (
                int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0
            )

        return cls(
            ts_ms=number("ts_ms"),
            kind=text("kind"),
            backend=text("backend"),
            actor=text("actor"),
            detail=text("detail"),
            version=number("version"),
        )


class EventList(BaseModel):
    pool: str
    events: list[EventOut] = Field(description="newest first")
