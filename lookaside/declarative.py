"""Operator state as a document: pools, their settings, static backends and
operator holds, in YAML or JSON.

    pools:
      - name: routeguide
        config: {policy: round_robin, lease_ttl_ms: 10000}   # the admin API's pool body
        static_backends:
          - {host: 10.0.0.7, port: 50051, weight: 2}
        holds:
          - {address: 10.0.0.9:50051, state: disabled}

apply() makes the registry hold what the document declares, through the
registry's own store and transition scripts, and writes nothing that is
already so (applying twice changes nothing). It adds and updates; it never
removes what the document does not mention. export() writes the current
state in the same format. A hold names a backend by address; one whose
backend is not registered yet is returned as pending (StateKeeper applies
it once the backend registers).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from admin_api.schemas.backends import BackendCreate
from admin_api.schemas.pools import PoolNameStr, PoolSettings
from lookaside.registry import transitions as t
from lookaside.registry.model import Backend, BackendState, backend_id_for
from lookaside.registry.port import StatePort
from lookaside.settings import split_host_port


class StateError(ValueError):
    """A state document that cannot be read or applied; says where and why."""


_PORT_RE = r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
ADDRESS_RE = rf"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):{_PORT_RE}$"
MAX_ITEMS = 1000


class Hold(BaseModel):
    """An operator's hold on a backend: it stays out of lists."""

    model_config = ConfigDict(extra="forbid", strict=True)

    address: Annotated[
        str,
        Field(
            max_length=300,
            pattern=ADDRESS_RE,
            description="host:port of the backend ([v6]:port for IPv6)",
            examples=["10.0.0.9:50051"],
        ),
    ]
    state: Literal["disabled"] = "disabled"

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        split_host_port(v, "hold address")
        return v.strip()


class PoolState(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: PoolNameStr
    config: PoolSettings = Field(default_factory=lambda: PoolSettings.model_validate({}))
    static_backends: list[BackendCreate] = Field(default_factory=list, max_length=MAX_ITEMS)
    holds: list[Hold] = Field(default_factory=list, max_length=MAX_ITEMS)


class StateDocument(BaseModel):
    """The whole declared state (contract: GET/POST /api/v1/state)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    pools: list[PoolState] = Field(default_factory=list, max_length=MAX_ITEMS)

    @field_validator("pools")
    @classmethod
    def _unique(cls, pools: list[PoolState]) -> list[PoolState]:
        names = [p.name for p in pools]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"pool {dupes[0]!r} appears more than once; declare each pool once")
        return pools


def parse(text: str, source: str = "document") -> StateDocument:
    """A StateDocument from YAML or JSON text, or StateError naming the field."""
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise StateError(f"{source} is not YAML or JSON: {exc}") from None
    if not isinstance(data, dict):
        raise StateError(f"{source} must be a mapping with a 'pools' list")
    try:
        return StateDocument.model_validate_json(json.dumps(data, default=str))
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:5]:
            where = ".".join(str(part) for part in err["loc"])
            problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        raise StateError(f"{source}: " + "; ".join(problems)) from None


def load(path: str) -> StateDocument:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from None
    return parse(text, path)


def dump(doc: StateDocument, fmt: str = "yaml") -> str:
    data = doc.model_dump(mode="json")
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    return str(yaml.safe_dump(data, sort_keys=False))


@dataclass
class ApplyResult:
    changes: list[str] = field(default_factory=list)
    # (pool, address) of holds whose backend is not registered yet
    pending: list[tuple[str, str]] = field(default_factory=list)


async def _ip(host: str) -> str:
    from balancer_server.registration import resolve_host

    return await resolve_host(host, "")


async def _apply_static(
    store: StatePort, pool: str, spec: BackendCreate, current: dict[str, Backend], actor: str
) -> str | None:
    want = spec.to_backend(pool, await _ip(spec.host))
    have = current.get(want.id)
    if (
        have is not None
        and have.static
        and (have.host, have.weight, have.zone, have.metadata)
        == (
            want.host,
            want.weight,
            want.zone,
            want.metadata,
        )
    ):
        return None
    if have is not None:
        want = Backend(**_keep(have, want))
    await store.put_static(want, actor=actor)
    return f"pool {pool}: static backend {want.ip}:{spec.port}"


def _keep(have: Backend, want: Backend) -> dict[str, Any]:
    """want's fields, keeping the state an operator or health checking set."""
    data = {name: getattr(want, name) for name in want.__dataclass_fields__}
    data["state"] = have.state
    return data


async def apply(store: StatePort, doc: StateDocument, *, actor: str = "apply") -> ApplyResult:
    result = ApplyResult()
    transitions = t.BackendTransitions(store)
    for pool in doc.pools:
        current_config = await store.get_pool(pool.name)
        want = pool.config.to_config(pool.name, current_config)
        if want != current_config:
            await store.put_pool(want, actor=actor)
            result.changes.append(f"pool {pool.name}: settings")
        snap = await store.snapshot(pool.name)
        backends = {b.id: b for b in snap.backends} if snap else {}
        for spec in pool.static_backends:
            change = await _apply_static(store, pool.name, spec, backends, actor)
            if change:
                result.changes.append(change)
        for hold in pool.holds:
            host, port = split_host_port(hold.address, "hold address")
            backend_id = backend_id_for(await _ip(host), port)
            have = backends.get(backend_id)
            if have is None:
                result.pending.append((pool.name, hold.address))
            elif have.state is not BackendState.DISABLED:
                await transitions.apply(pool.name, backend_id, t.DISABLE, actor=actor)
                result.changes.append(f"pool {pool.name}: hold on {hold.address}")
    return result


async def export(store: StatePort) -> StateDocument:
    pools = []
    for name in await store.list_pools():
        snap = await store.snapshot(name)
        if snap is None:
            continue
        pools.append(
            PoolState.model_construct(
                name=name,
                config=PoolSettings.from_config(snap.config),
                static_backends=[
                    BackendCreate.model_construct(
                        host=b.host or b.ip,
                        port=b.port,
                        weight=b.weight,
                        zone=b.zone,
                        metadata=dict(b.metadata),
                    )
                    for b in snap.backends
                    if b.static
                ],
                holds=[
                    Hold.model_construct(address=_address(b), state="disabled")
                    for b in snap.backends
                    if b.state is BackendState.DISABLED
                ],
            )
        )
    return StateDocument.model_construct(pools=pools)


def _address(b: Backend) -> str:
    return f"[{b.ip}]:{b.port}" if ":" in b.ip else f"{b.ip}:{b.port}"
