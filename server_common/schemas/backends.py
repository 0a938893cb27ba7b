"""Backends of a pool: what the registry holds, and static registrations."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from lookaside_registry import validation as v
from lookaside_registry.model import Backend, backend_id_for
from server_common.schemas.common import INTEGRAL, JsonInt

Weight = Annotated[
    int,
    Field(
        ge=v.WEIGHT_MIN,
        le=v.WEIGHT_MAX,
        description=f"share of calls relative to the pool's other backends ({v.WEIGHT_MIN}..{v.WEIGHT_MAX})",
    ),
    INTEGRAL,
]
MetadataKey = Annotated[str, Field(min_length=1, max_length=63, pattern=v.METADATA_KEY_RE.pattern)]
MetadataValue = Annotated[str, Field(max_length=v.METADATA_MAX_VALUE)]
# Pydantic states the key pattern as patternProperties, which lets any other
# key through; say exactly what is accepted.
METADATA_SCHEMA = {
    "type": "object",
    "description": "free-form labels",
    "maxProperties": v.METADATA_MAX_ENTRIES,
    "propertyNames": {"pattern": v.METADATA_KEY_RE.pattern, "minLength": 1, "maxLength": 63},
    "additionalProperties": {"type": "string", "maxLength": v.METADATA_MAX_VALUE},
}


class BackendCreate(BaseModel):
    """A static backend: listed until removed, with no lease to renew."""

    model_config = ConfigDict(extra="forbid", strict=True)

    host: str = Field(
        min_length=1,
        max_length=253,
        description="IP address or resolvable host name (resolved once, now)",
        examples=["10.0.0.7"],
    )
    port: JsonInt = Field(ge=1, le=65535)
    weight: Weight = 1
    zone: Annotated[
        str, Field(max_length=63, pattern=v.ZONE_RE.pattern), AfterValidator(v.check_zone)
    ] = ""
    metadata: Annotated[
        dict[MetadataKey, MetadataValue],
        Field(max_length=v.METADATA_MAX_ENTRIES),
        AfterValidator(v.check_metadata),
        WithJsonSchema(METADATA_SCHEMA),
    ] = Field(default_factory=dict)

    def to_backend(self, pool: str, ip: str) -> Backend:
        """The static backend this asks for, at `ip` (its host resolved)."""
        return Backend(
            id=backend_id_for(ip, self.port),
            pool=pool,
            host=self.host,
            ip=ip,
            port=self.port,
            weight=self.weight,
            zone=self.zone,
            metadata=dict(self.metadata),
            static=True,
        )


class WeightChange(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    weight: Weight


class BackendOut(BaseModel):
    """One backend. Times are Unix milliseconds from the Redis clock."""

    id: str
    pool: str
    address: str = Field(description="ip:port that clients dial")
    host: str
    ip: str
    port: int
    weight: int
    zone: str
    metadata: dict[str, str]
    state: str = Field(description="serving, draining, disabled, unhealthy or ejected")
    detail: str = Field(
        description="why health checking or outlier detection took it out (last verdict)"
    )
    ejected_until_ms: int = Field(description="when an ejection ends (0: never ejected)")
    ejections: int = Field(
        description="outlier ejections in a row; each one lasts longer, and the count falls "
        "by one per interval the backend passes"
    )
    static: bool = Field(description="registered by an operator, with no lease")
    held: bool = Field(
        default=False,
        description="listed only because the panic guard holds its removal (state is still "
        "serving)",
    )
    held_for: str = Field(
        default="",
        description="the removal held: expire, health_fail or eject ('' when not held)",
    )
    held_since_ms: int = Field(default=0, description="when the guard first held it (0: not held)")
    registered_at_ms: int
    last_heard_ms: int = Field(description="last registration or heartbeat")
    lease_expires_ms: int = Field(description="0 for a static backend")
    lease_ttl_ms: int
    load: dict[str, float] = Field(
        description="what the backend reported in its last heartbeat (utilization, in_flight, qps)"
    )

    @classmethod
    def from_backend(cls, b: Backend) -> BackendOut:
        ip = f"[{b.ip}]" if ":" in b.ip else b.ip
        return cls(
            id=b.id,
            pool=b.pool,
            address=f"{ip}:{b.port}",
            host=b.host,
            ip=b.ip,
            port=b.port,
            weight=b.weight,
            zone=b.zone,
            metadata={str(k): str(val) for k, val in b.metadata.items()},
            state=b.state.value,
            detail=b.health_detail,
            ejected_until_ms=int(b.ejected_until_ms),
            ejections=int(b.ejections),
            static=b.static,
            held=b.held,
            held_for=b.guard_for if b.held else "",
            held_since_ms=int(b.guard_since_ms) if b.held else 0,
            registered_at_ms=int(b.registered_at_ms),
            last_heard_ms=int(b.last_heard_ms),
            lease_expires_ms=int(b.lease_expires_ms),
            lease_ttl_ms=int(b.lease_ttl_ms),
            load={
                str(k): float(val)
                for k, val in b.load.items()
                if isinstance(val, int | float) and not isinstance(val, bool)
            },
        )


class BackendList(BaseModel):
    pool: str
    version: int
    backends: list[BackendOut]
