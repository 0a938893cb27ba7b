"""Plain data for pools and backends, independent of any wire format."""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any


class BackendState(enum.StrEnum):
    """Whether a backend should receive new calls.

    SERVING is the only state that appears in lists. DRAINING keeps the
    registration and lease but takes no new calls; DISABLED is an operator's
    hold; UNHEALTHY is set by health checking; EJECTED is set by outlier
    detection from clients' call outcomes, until `ejected_until_ms`.
    """

    SERVING = "serving"
    DRAINING = "draining"
    DISABLED = "disabled"
    UNHEALTHY = "unhealthy"
    EJECTED = "ejected"

    @property
    def faulty(self) -> bool:
        """Out of the lists because of a detected fault (not an operator's
        or the backend's own decision): what the panic guard limits."""
        return self in (BackendState.UNHEALTHY, BackendState.EJECTED)


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
class HealthChecks:
    """Active health checking (grpc.health.v1) of a pool's backends."""

    enabled: bool = True
    service: str = ""
    interval_ms: int = 2_000
    timeout_ms: int = 1_000
    unhealthy_threshold: int = 2
    healthy_threshold: int = 2


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Outlier detection from the call outcomes clients report per backend
    (gRFC A50's algorithms; see lookaside_registry.outlier)."""

    enabled: bool = True
    interval_ms: int = 10_000
    base_ejection_ms: int = 30_000
    max_ejection_ms: int = 300_000
    max_ejection_percent: int = 10
    # A backend with more than this percent of its calls lost (finished but
    # not known to have reached it) is ejected; 0 turns the check off.
    failure_percent: int = 50
    # Success-rate ejection: below mean - factor/1000 * stdev; 0 turns it off.
    stdev_factor: int = 1900
    # Backends with at least `request_volume` calls in the interval take
    # part; with fewer than `min_hosts` of them, no one is ejected.
    min_hosts: int = 3
    request_volume: int = 20
    # A verdict from reported outcomes ejects only when at least this many
    # distinct client streams reported lost calls against the backend.
    min_reporters: int = 2
    # Eject a backend whose own mean latency exceeds this many times the
    # median of the pool's other backends; 0 turns the check off.
    latency_factor: int = 0


@dataclass(frozen=True, slots=True)
class RegistrationRules:
    """What a self-registration into the pool may claim (the Registry API;
    operators' static backends are not bound by it).

    `address_policy` binds the registered address to the caller: `peer`
    (the caller's own address, or a name that resolves to it), `certificate`
    (an IP or DNS SAN of the caller's client certificate), `cidr` (an
    address in one of `networks`) or `any` (registrars that register
    others). `max_weight` and `max_lease_ttl_ms` cap what a registration
    asks for."""

    address_policy: str = "peer"
    networks: tuple[str, ...] = ()
    max_weight: int = 100
    max_lease_ttl_ms: int = 600_000

    def __post_init__(self) -> None:
        # JSON gives lists; the config compares equal whichever it came from.
        object.__setattr__(self, "networks", tuple(self.networks))


# Keys of the flat layout that stored configs had before the nested one.
_FLAT_HEALTH = {
    "health_checks": "enabled",
    "health_service": "service",
    "health_interval_ms": "interval_ms",
    "health_timeout_ms": "timeout_ms",
    "unhealthy_threshold": "unhealthy_threshold",
    "healthy_threshold": "healthy_threshold",
}


def _nested(cls: type[Any], raw: Any) -> Any:
    if not isinstance(raw, dict):
        return cls()
    return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class PoolConfig:
    name: str
    policy: str = "round_robin"
    report_interval_ms: int = 10_000
    lease_ttl_ms: int = 10_000
    drops: tuple[DropRate, ...] = ()
    fallback: bool = False
    health_checks: HealthChecks = field(default_factory=HealthChecks)
    outlier_detection: OutlierDetection = field(default_factory=OutlierDetection)
    registration: RegistrationRules = field(default_factory=RegistrationRules)
    # Deterministic subsetting: each client stream gets this many of the
    # listed backends (balancer_server.subsets); 0: every backend.
    subset_size: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    def updated(self, **flat: Any) -> PoolConfig:
        """A copy with settings changed, given by top-level field or by their
        flat names (`health_interval_ms`, `unhealthy_threshold`,
        `outlier_min_hosts`, `health_checks=False`, ...)."""
        health = {new: flat.pop(old) for old, new in _FLAT_HEALTH.items()
                  if old in flat and not isinstance(flat[old], HealthChecks)}  # fmt: skip
        outlier = {k.removeprefix("outlier_"): flat.pop(k) for k in list(flat)
                   if k.startswith("outlier_") and k != "outlier_detection"}  # fmt: skip
        if "outlier_detection" in flat and not isinstance(
            flat["outlier_detection"], OutlierDetection
        ):
            outlier["enabled"] = flat.pop("outlier_detection")
        out = replace(self, **flat)
        if health:
            out = replace(out, health_checks=replace(out.health_checks, **health))
        if outlier:
            out = replace(out, outlier_detection=replace(out.outlier_detection, **outlier))
        return out

    @classmethod
    def from_flat(cls, name: str, **flat: Any) -> PoolConfig:
        """A config from flat setting names (see `updated`)."""
        return cls(name=name).updated(**flat)

    @classmethod
    def from_json(cls, raw: str | bytes) -> PoolConfig:
        data = json.loads(raw)
        if not isinstance(data.get("health_checks", {}), dict):  # the flat layout
            names = set(cls.__dataclass_fields__) | set(_FLAT_HEALTH)
            flat = {k: v for k, v in data.items() if k in names or k.startswith("outlier_")}
            flat.pop("name", None)
            drops = tuple(DropRate(**d) for d in flat.pop("drops", ()))
            return cls.from_flat(data["name"], drops=drops, **flat)
        drops = tuple(DropRate(**d) for d in data.pop("drops", ()))
        health = _nested(HealthChecks, data.pop("health_checks", None))
        outlier = _nested(OutlierDetection, data.pop("outlier_detection", None))
        registration = _nested(RegistrationRules, data.pop("registration", None))
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(drops=drops, health_checks=health, outlier_detection=outlier,
                   registration=registration, **known)  # fmt: skip


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
    # Outlier detection: when an ejection ends, and how many ejections in a
    # row have lengthened it (A50's multiplier).
    ejected_until_ms: int = 0
    ejections: int = 0
    # An operator's hold ("drained" or "disabled"; lookaside_registry.machine).
    hold: str = ""
    # The panic guard: when it first held a removal of this backend, when
    # a write last asserted the hold, the event it holds ("expire",
    # "health_fail", "eject"; "" when not held), and whether health
    # checking failed it meanwhile.
    guard_since_ms: int = 0
    guard_seen_ms: int = 0
    guard_for: str = ""
    health_failing: bool = False
    # Who took the lease (a registration's principal: "pool-token:<pool>#<token
    # id>", "mtls:<identity>", ...): only it may replace, heartbeat, drain or
    # deregister the backend while the lease is live. Empty for static ones.
    owner: str = ""

    @property
    def serving(self) -> bool:
        return self.state is BackendState.SERVING

    @property
    def held(self) -> bool:
        """Listed only because the panic guard holds its removal."""
        return self.guard_since_ms > 0 and self.state is BackendState.SERVING

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
    # Bumped by every change to the pool's settings (compare-and-set).
    config_version: int = 0

    @property
    def serving(self) -> tuple[Backend, ...]:
        return tuple(b for b in self.backends if b.serving)
