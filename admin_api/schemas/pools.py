"""Pools: the settings a pool's clients get, as PoolConfig holds them."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from admin_api.schemas.common import INTEGRAL, JsonInt
from lookaside.registry import validation as v
from lookaside.registry.model import DropRate, PoolConfig, PoolSnapshot

Policy = Literal["round_robin", "least_loaded"]
MAX_DROPS = 32

PoolNameStr = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=v.POOL_NAME_RE.pattern,
        description="1..128 characters of [A-Za-z0-9._-], starting with a letter or digit",
        examples=["routeguide"],
    ),
]
DropToken = Annotated[
    str,
    Field(
        min_length=1,
        max_length=32,
        json_schema_extra={"pattern": v.DROP_TOKEN_RE.pattern},
        description="1..32 characters of [a-z0-9_], starting with a letter",
    ),
    AfterValidator(v.check_drop_token),
]
ReportIntervalMs = Annotated[
    int,
    Field(
        ge=v.REPORT_INTERVAL_MIN_MS,
        le=v.REPORT_INTERVAL_MAX_MS,
        description="how often clients send load reports, in ms (0: never)",
    ),
    INTEGRAL,
]
LeaseTtlMs = Annotated[
    int,
    Field(
        ge=v.LEASE_TTL_MIN_MS,
        le=v.LEASE_TTL_MAX_MS,
        description="default lease of a self-registered backend, in ms",
    ),
    INTEGRAL,
]


class Drop(BaseModel):
    """Clients shed `per_mille` of their calls and report them under `token`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    token: DropToken
    per_mille: JsonInt = Field(ge=0, le=1000, description="share of calls to drop, in 1/1000")


def _check_drops(drops: list[Drop]) -> list[Drop]:
    total = sum(d.per_mille for d in drops)
    if total > 1000:
        raise ValueError(f"drop rates add up to {total} per mille; at most 1000 are allowed")
    tokens = [d.token for d in drops]
    dupes = sorted({t for t in tokens if tokens.count(t) > 1})
    if dupes:
        raise ValueError(f"drop token {dupes[0]!r} appears more than once; give each token once")
    return drops


Drops = Annotated[
    list[Drop],
    Field(max_length=MAX_DROPS, description="drop rates; their per_mille add up to at most 1000"),
    AfterValidator(_check_drops),
]


class PoolSettings(BaseModel):
    """A pool's full settings (PUT). Omitted fields take their defaults."""

    model_config = ConfigDict(extra="forbid", strict=True)

    policy: Policy = Field(
        "round_robin",
        description="round_robin: weights as given; least_loaded: weights also shrink for backends whose reported latency is higher",
    )
    report_interval_ms: ReportIntervalMs = 10_000
    lease_ttl_ms: LeaseTtlMs = 10_000
    drops: Drops = Field(default_factory=list)
    fallback: bool = Field(False, description="tell clients to use their fallback backends")

    def to_config(self, name: str, base: PoolConfig | None = None) -> PoolConfig:
        """These settings over `base` (the pool's current config): fields
        this API does not manage keep their values."""
        return dataclasses.replace(
            base or PoolConfig(name=name),
            name=name,
            policy=self.policy,
            report_interval_ms=self.report_interval_ms,
            lease_ttl_ms=self.lease_ttl_ms,
            drops=tuple(DropRate(d.token, d.per_mille) for d in self.drops),
            fallback=self.fallback,
        )


class PoolCreate(PoolSettings):
    """A new pool (POST)."""

    name: PoolNameStr


class PoolPatch(BaseModel):
    """Changes to some settings (PATCH): omitted or null fields stay as they
    are; a patch that changes nothing writes nothing."""

    model_config = ConfigDict(extra="forbid", strict=True)

    policy: Policy | None = None
    report_interval_ms: ReportIntervalMs | None = None
    lease_ttl_ms: LeaseTtlMs | None = None
    drops: Drops | None = None
    fallback: bool | None = None

    def apply(self, config: PoolConfig) -> PoolSettings:
        current = PoolSettings.model_construct(
            policy=config.policy,
            report_interval_ms=config.report_interval_ms,
            lease_ttl_ms=config.lease_ttl_ms,
            drops=[
                Drop.model_construct(token=d.token, per_mille=d.per_mille) for d in config.drops
            ],
            fallback=config.fallback,
        )
        return current.model_copy(update=self.changes())

    def changes(self) -> dict[str, object]:
        return {k: val for k, val in self if val is not None}


class DropOut(BaseModel):
    token: str
    per_mille: int


class BackendCounts(BaseModel):
    total: int
    serving: int
    draining: int
    disabled: int
    unhealthy: int


class PoolOut(BaseModel):
    """A pool as the registry holds it now."""

    name: str
    version: int = Field(description="bumped by every change to the pool")
    policy: str
    report_interval_ms: int
    lease_ttl_ms: int
    drops: list[DropOut]
    fallback: bool
    backends: BackendCounts

    @classmethod
    def from_snapshot(cls, snap: PoolSnapshot) -> PoolOut:
        counts = {"serving": 0, "draining": 0, "disabled": 0, "unhealthy": 0}
        for b in snap.backends:
            counts[b.state.value] = counts.get(b.state.value, 0) + 1
        c = snap.config
        return cls(
            name=snap.name,
            version=snap.version,
            policy=c.policy,
            report_interval_ms=c.report_interval_ms,
            lease_ttl_ms=c.lease_ttl_ms,
            drops=[DropOut(token=d.token, per_mille=d.per_mille) for d in c.drops],
            fallback=c.fallback,
            backends=BackendCounts(total=len(snap.backends), **counts),
        )


class PoolList(BaseModel):
    pools: list[PoolOut]
