"""Pools: the settings a pool's clients get, as PoolConfig holds them."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model

from lookaside_registry import validation as v
from lookaside_registry.model import (
    BackendState,
    DropRate,
    HealthChecks,
    OutlierDetection,
    PoolConfig,
    PoolSnapshot,
    RegistrationRules,
)
from server_common.schemas.common import INTEGRAL, JsonInt

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

SubsetSize = Annotated[
    int,
    Field(
        ge=v.SUBSET_SIZE_MIN,
        le=v.SUBSET_SIZE_MAX,
        description="deterministic subsetting: how many of the pool's backends each client "
        "stream is given (a stable, balanced subset; docs/subsetting.md); 0: every backend",
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


def _int(lo: int, hi: int, description: str) -> Any:
    return Annotated[int, Field(ge=lo, le=hi, description=description), INTEGRAL]


class HealthCheckSettings(BaseModel):
    """Active health checking of the pool's backends over grpc.health.v1."""

    model_config = ConfigDict(extra="forbid", strict=True)

    enabled: bool = Field(default=True, description="probe the pool's backends")
    service: str = Field(
        default="",
        max_length=200,
        pattern=r"^[A-Za-z0-9._/-]*$",
        description="the grpc.health.v1 service to check; empty: the server as a whole",
    )
    interval_ms: _int(100, 3_600_000, "time between Checks, in ms") = 2_000  # type: ignore[valid-type]
    timeout_ms: _int(50, 60_000, "a Check with no answer by then fails, in ms") = 1_000  # type: ignore[valid-type]
    unhealthy_threshold: _int(1, 100, "failed Checks in a row that take a backend out") = 2  # type: ignore[valid-type]
    healthy_threshold: _int(1, 100, "passed Checks in a row that let it back") = 2  # type: ignore[valid-type]


class OutlierDetectionSettings(BaseModel):
    """Ejection of backends that lose calls, judged from the per-backend
    outcomes the thin client reports (gRFC A50's algorithms)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    enabled: bool = Field(default=True, description="judge the pool's backends")
    interval_ms: _int(100, 3_600_000, "how often outcomes are judged, in ms") = 10_000  # type: ignore[valid-type]
    base_ejection_ms: _int(100, 86_400_000, "length of a first ejection, in ms") = 30_000  # type: ignore[valid-type]
    max_ejection_ms: _int(  # type: ignore[valid-type]
        100, 86_400_000, "longest ejection (never below base_ejection_ms), in ms"
    ) = 300_000
    max_ejection_percent: _int(  # type: ignore[valid-type]
        0, 100, "most of the pool that may be ejected at once (one backend always may)"
    ) = 10
    failure_percent: _int(  # type: ignore[valid-type]
        0, 100, "eject a backend that lost more than this percent of its calls; 0: off"
    ) = 50
    stdev_factor: _int(  # type: ignore[valid-type]
        0,
        100_000,
        "eject a backend whose delivery rate is more than stdev_factor/1000 standard "
        "deviations below the pool's mean; 0: off",
    ) = 1_900
    min_hosts: _int(1, 1_000, "judge no one unless this many backends qualify") = 3  # type: ignore[valid-type]
    request_volume: _int(  # type: ignore[valid-type]
        1, 1_000_000, "calls a backend needs in an interval to qualify"
    ) = 20
    min_reporters: _int(  # type: ignore[valid-type]
        1,
        1_000,
        "distinct client streams that must report lost calls against a backend before "
        "reported outcomes eject it",
    ) = 2
    latency_factor: _int(  # type: ignore[valid-type]
        0,
        1_000,
        "eject a backend whose own mean latency is over this many times the median of the "
        "pool's other backends; 0: off",
    ) = 0


Network = Annotated[
    str,
    Field(max_length=64, description="a network in CIDR notation", examples=["10.0.0.0/8"]),
    AfterValidator(v.check_network),
]


class RegistrationSettings(BaseModel):
    """What a backend's own registration (the Registry API) may claim.
    Operators' static backends are not bound by these."""

    model_config = ConfigDict(extra="forbid", strict=True)

    address_policy: Literal["peer", "certificate", "cidr", "any"] = Field(
        "peer",
        description="peer: the registered host must be the caller's own address (or a name "
        "that resolves to it); certificate: an IP or DNS SAN of the caller's client "
        "certificate; cidr: an address in `networks`; any: whatever the registrant says "
        "(registrars that register others)",
    )
    networks: list[Network] = Field(
        default_factory=list,
        max_length=v.NETWORKS_MAX,
        description="the networks addresses must be in (address_policy cidr)",
    )
    max_weight: _int(  # type: ignore[valid-type]
        v.WEIGHT_MIN, v.WEIGHT_MAX, "the highest weight a registration may ask for"
    ) = 100
    max_lease_ttl_ms: _int(  # type: ignore[valid-type]
        v.LEASE_TTL_MIN_MS,
        v.LEASE_TTL_MAX_MS,
        "the longest lease a registration may ask for, in ms (and at least lease_ttl_ms)",
    ) = 600_000


# The nested settings, one to one with PoolConfig's nested objects.
_NESTED: dict[str, type[BaseModel]] = {
    "health_checks": HealthCheckSettings,
    "outlier_detection": OutlierDetectionSettings,
    "registration": RegistrationSettings,
}


def _partial(model: type[BaseModel]) -> Any:
    """`model` with every field optional (null or omitted: unchanged)."""
    fields: dict[str, Any] = {}
    for name, f in model.model_fields.items():
        kind: Any = Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
        fields[name] = (kind | None, Field(None, description=f.description))
    return create_model(
        model.__name__.replace("Settings", "Patch"),
        __config__=ConfigDict(extra="forbid", strict=True),
        __doc__=f"Changes to some of: {model.__doc__}",
        **fields,
    )


HealthCheckPatch = _partial(HealthCheckSettings)
OutlierDetectionPatch = _partial(OutlierDetectionSettings)
RegistrationPatch = _partial(RegistrationSettings)


def _plain(settings: Any) -> dict[str, Any]:
    """A nested settings dataclass as the API's values (tuples as lists)."""
    return {
        k: list(x) if isinstance(x, tuple) else x for k, x in dataclasses.asdict(settings).items()
    }


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
    health_checks: HealthCheckSettings = Field(default_factory=HealthCheckSettings)
    outlier_detection: OutlierDetectionSettings = Field(default_factory=OutlierDetectionSettings)
    registration: RegistrationSettings = Field(
        default_factory=lambda: RegistrationSettings.model_validate({})
    )
    subset_size: SubsetSize = 0

    def to_config(self, name: str, base: PoolConfig | None = None) -> PoolConfig:
        """These settings over `base` (the pool's current config): fields
        this API does not manage keep their values. InvalidInput (422) when
        the registration rules do not fit together."""
        rules = self.registration
        v.check_registration_rules(
            rules.address_policy, rules.networks, self.lease_ttl_ms, rules.max_lease_ttl_ms
        )
        return dataclasses.replace(
            base or PoolConfig(name=name),
            name=name,
            policy=self.policy,
            report_interval_ms=self.report_interval_ms,
            lease_ttl_ms=self.lease_ttl_ms,
            drops=tuple(DropRate(d.token, d.per_mille) for d in self.drops),
            fallback=self.fallback,
            health_checks=HealthChecks(**self.health_checks.model_dump()),
            outlier_detection=OutlierDetection(**self.outlier_detection.model_dump()),
            registration=RegistrationRules(**rules.model_dump()),
            subset_size=self.subset_size,
        )

    @classmethod
    def from_config(cls, config: PoolConfig) -> PoolSettings:
        nested: dict[str, Any] = {
            attr: model.model_construct(**_plain(getattr(config, attr)))
            for attr, model in _NESTED.items()
        }
        return cls.model_construct(
            policy=config.policy,
            report_interval_ms=config.report_interval_ms,
            lease_ttl_ms=config.lease_ttl_ms,
            drops=[
                Drop.model_construct(token=d.token, per_mille=d.per_mille) for d in config.drops
            ],
            fallback=config.fallback,
            subset_size=config.subset_size,
            **nested,
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
    health_checks: HealthCheckPatch | None = None  # type: ignore[valid-type]
    outlier_detection: OutlierDetectionPatch | None = None  # type: ignore[valid-type]
    registration: RegistrationPatch | None = None  # type: ignore[valid-type]
    subset_size: SubsetSize | None = None

    def apply(self, config: PoolConfig) -> PoolSettings:
        current = PoolSettings.from_config(config)
        update: dict[str, object] = {}
        for k, val in self.changes().items():
            if k in _NESTED:
                inner = {ik: iv for ik, iv in val if iv is not None}  # type: ignore[attr-defined]
                val = getattr(current, k).model_copy(update=inner)
            update[k] = val
        return current.model_copy(update=update)

    def changes(self) -> dict[str, object]:
        return {k: val for k, val in self if val is not None}


class DropOut(BaseModel):
    token: str
    per_mille: int


class BackendCounts(BaseModel):
    total: int
    serving: int = Field(description="serving and not held (held ones count under `held`)")
    held: int = Field(
        default=0,
        description="listed only because the panic guard holds their removal (health "
        "failure, ejection or lease expiry)",
    )
    draining: int
    disabled: int
    unhealthy: int
    ejected: int


class PoolOut(BaseModel):
    """A pool as the registry holds it now."""

    name: str
    version: int = Field(description="bumped by every change to the pool")
    config_version: int = Field(
        description="bumped by every change to the pool's settings; send it as If-Match "
        "to PUT or PATCH to change them only if no one else did meanwhile"
    )
    policy: str
    report_interval_ms: int
    lease_ttl_ms: int
    drops: list[DropOut]
    fallback: bool
    health_checks: HealthCheckSettings
    outlier_detection: OutlierDetectionSettings
    registration: RegistrationSettings
    subset_size: int = Field(
        description="how many backends each client stream is given; 0: every backend"
    )
    backends: BackendCounts

    @classmethod
    def from_snapshot(cls, snap: PoolSnapshot) -> PoolOut:
        counts = {s.value: 0 for s in BackendState}
        counts["held"] = 0
        for b in snap.backends:
            counts["held" if b.held else b.state.value] += 1
        c = snap.config
        settings = PoolSettings.from_config(c)
        return cls(
            name=snap.name,
            version=snap.version,
            config_version=snap.config_version,
            policy=c.policy,
            report_interval_ms=c.report_interval_ms,
            lease_ttl_ms=c.lease_ttl_ms,
            drops=[DropOut(token=d.token, per_mille=d.per_mille) for d in c.drops],
            fallback=c.fallback,
            health_checks=settings.health_checks,
            outlier_detection=settings.outlier_detection,
            registration=settings.registration,
            subset_size=c.subset_size,
            backends=BackendCounts(total=len(snap.backends), **counts),
        )


class PoolList(BaseModel):
    pools: list[PoolOut]
