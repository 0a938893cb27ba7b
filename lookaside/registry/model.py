"""Plain data for pools and backends, independent of any wire format."""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any


class BackendState(enum.StrEnum):
    """Whether a backend should receive new calls.

    SERVING is the only state that appears in lists. DRAINING keeps the
    registration and lease but takes no new calls; DISABLED is an operator's
    hold; UNHEALTHY is set by health checking.
    """

    SERVING = "serving"
    DRAINING = "draining"
    DISABLED = "disabled"
    UNHEALTHY = "unhealthy"


def backend_id_for(host: str, port: int) -> str:
    """A stable id for an address, so re-registering is idempotent."""
    digest = hashlib.blake2b(f"{host}:{port}".encode(), digest_size=6).hexdigest()
    return digest


@dataclass(frozen=True, slots=True)
class DropRate:
    """Share of calls, in per-mille, that clients shed under `token`."""

    token: str
    per_mille: int


@dataclass(frozen=True, slots=True)
class PoolConfig:
    name: str
    policy: str = "round_robin"
    report_interval_ms: int = 10_000
    lease_ttl_ms: int = 10_000
    drops: tuple[DropRate, ...] = ()
    fallback: bool = False
    # Active health checking (grpc.health.v1) of the pool's backends.
    health_checks: bool = True
    health_service: str = ""
    health_interval_ms: int = 2_000
    health_timeout_ms: int = 1_000
    unhealthy_threshold: int = 2
    healthy_threshold: int = 2

    def to_json(self) -> str:
        data = asdict(self)
        data["drops"] = [asdict(d) for d in self.drops]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> PoolConfig:
        data = json.loads(raw)
        drops = tuple(DropRate(**d) for d in data.pop("drops", ()))
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(drops=drops, **known)


@dataclass(frozen=True, slots=True)
class Backend:
    id: str
    pool: str
    host: str
    ip: str
    port: int
    weight: int = 1
    zone: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    state: BackendState = BackendState.SERVING
    static: bool = False
    lease_id: str = ""
    registered_at_ms: int = 0
    last_heard_ms: int = 0
    lease_expires_ms: int = 0
    lease_ttl_ms: int = 0
    load: dict[str, float] = field(default_factory=dict)
    health_detail: str = ""
    # EWMA of the latency the backend reports, and the value lists were
    # last built with (least_loaded pools).
    latency_ewma_ms: float = 0.0
    latency_published_ms: float = 0.0

    @property
    def serving(self) -> bool:
        return self.state is BackendState.SERVING

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Backend:
        data = json.loads(raw)
        # cjson encodes an empty Lua table as {} and Python as {} too, but an
        # empty table may come back as []; normalise both maps.
        for key in ("metadata", "load"):
            if not isinstance(data.get(key), dict):
                data[key] = {}
        data["state"] = BackendState(data.get("state", "serving"))
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """A pool as of one version: what every front end renders from."""

    name: str
    version: int
    config: PoolConfig
    backends: tuple[Backend, ...]

    @property
    def serving(self) -> tuple[Backend, ...]:
        return tuple(b for b in self.backends if b.serving)
