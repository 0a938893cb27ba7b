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
already so (applying twice changes nothing). It merges: a pool's `config`
is a JSON merge patch (RFC 7386) over the pool's current settings, so only
the keys it names change (nested objects merge key by key), and static
backends and holds are added or updated. Nothing the document leaves out is removed unless `prune` is
given: then each pool named is made exactly as declared (settings not named
go back to their defaults, unlisted static backends are removed, unlisted
holds are lifted). Pools the document does not name are never touched.
Every change is listed, old -> new; `dry_run` lists them and writes nothing.
export() writes the current state in the same format. A hold names a
backend by address; one whose backend is not registered yet is returned as
pending (StateKeeper applies it once the backend registers).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from lookaside_registry import transitions as t
from lookaside_registry.hosts import resolve_host
from lookaside_registry.model import Backend, BackendState, PoolConfig, backend_id_for
from lookaside_registry.port import StatePort
from server_common.schemas.backends import BackendCreate
from server_common.schemas.pools import PoolNameStr, PoolSettings
from server_common.settings import readable_file, split_host_port


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
    config: PoolSettings = Field(
        default_factory=lambda: PoolSettings.model_validate({}),
        description="merged over the pool's settings as a JSON merge patch (RFC 7386): only "
        "the keys named change and nested objects merge; apply with prune to reset the rest",
    )
    static_backends: list[BackendCreate] = Field(default_factory=list, max_length=MAX_ITEMS)
    holds: list[Hold] = Field(default_factory=list, max_length=MAX_ITEMS)

    def patch(self) -> dict[str, Any]:
        """The config as the merge patch it was written as: the keys named."""
        return _named(self.config)


def _named(model: BaseModel) -> dict[str, Any]:
    """The fields of `model` that were given (recursively), as JSON values."""
    out: dict[str, Any] = {}
    for name in model.model_fields_set:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out[name] = _named(value)
        else:
            out[name] = model.model_dump(mode="json", include={name})[name]
    return out


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: `patch` applied to `target`."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


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
    # every change, old -> new (written, or with dry_run to be written)
    changes: list[str] = field(default_factory=list)
    # (pool, address) of holds whose backend is not registered yet
    pending: list[tuple[str, str]] = field(default_factory=list)


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def settings_changes(old: PoolSettings, new: PoolSettings) -> list[str]:
    """`key: old -> new` for every setting that differs."""
    before, after = _flat(old.model_dump(mode="json")), _flat(new.model_dump(mode="json"))
    return [
        f"{key}: {_show(before.get(key))} -> {_show(after[key])}"
        for key in after
        if before.get(key) != after[key]
    ]


def wanted_settings(pool: PoolState, current: PoolConfig | None, prune: bool) -> PoolSettings:
    """The settings `pool` declares, merged over `current` (over the
    defaults when pruning); StateError when the result is not valid."""
    base = (
        {}
        if prune or current is None
        else PoolSettings.from_config(current).model_dump(mode="json")
    )
    merged = merge_patch(base, pool.patch())
    try:
        return PoolSettings.model_validate_json(json.dumps(merged))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"])
        raise StateError(
            f"pool {pool.name}: config merged over the current settings is not valid: "
            f"{where}: {err['msg'].removeprefix('Value error, ')}"
        ) from None


async def _ip(host: str) -> str:
    return await resolve_host(host, "")


async def _apply_static(
    store: StatePort,
    pool: str,
    spec: BackendCreate,
    current: dict[str, Backend],
    actor: str,
    dry_run: bool,
) -> tuple[str, str | None]:
    """(the backend's id, the change or None when it is already so)."""
    want = spec.to_backend(pool, await _ip(spec.host))
    have = current.get(want.id)
    fields = ("host", "weight", "zone", "metadata")
    if (
        have is not None
        and have.static
        and all(getattr(have, f) == getattr(want, f) for f in fields)
    ):
        return want.id, None
    where = f"pool {pool}: static backend {_address(want)}"
    if have is not None and not have.static:
        raise StateError(
            f"{where} is registered with a lease (a running backend); remove it from the "
            "file, or deregister it first"
        )
    if have is None:
        change = f"{where}: added (weight {want.weight})"
        if not dry_run:
            await store.put_static(want, actor=actor)
        return want.id, change
    changed = {f: getattr(want, f) for f in fields if getattr(have, f) != getattr(want, f)}
    diff = [f"{f} {_show(getattr(have, f))} -> {_show(v)}" for f, v in changed.items()]
    if not dry_run:
        kind = "weight_changed" if set(changed) == {"weight"} else "updated"
        await store.update_backend(pool, want.id, actor=actor, kind=kind, **changed)
    return want.id, f"{where}: {', '.join(diff)}"


async def apply(
    store: StatePort,
    doc: StateDocument,
    *,
    actor: str = "apply",
    prune: bool = False,
    dry_run: bool = False,
) -> ApplyResult:
    """Makes the registry hold `doc` (see the module's docstring); with
    dry_run, only says what that would change."""
    result = ApplyResult()
    transitions = t.BackendTransitions(store)
    for pool in doc.pools:
        current_config = await store.get_pool(pool.name)
        settings = wanted_settings(pool, current_config, prune)
        want = settings.to_config(pool.name, current_config)
        if want != current_config:
            old = (
                PoolSettings.from_config(current_config)
                if current_config is not None
                else PoolSettings.model_validate({})
            )
            if current_config is None:
                result.changes.append(f"pool {pool.name}: created")
            result.changes += [f"pool {pool.name}: {c}" for c in settings_changes(old, settings)]
            if not dry_run:
                await store.put_pool(want, actor=actor)
        snap = await store.snapshot(pool.name)
        backends = {b.id: b for b in snap.backends} if snap else {}
        static_ids = set()
        for spec in pool.static_backends:
            backend_id, change = await _apply_static(
                store, pool.name, spec, backends, actor, dry_run
            )
            static_ids.add(backend_id)
            if change:
                result.changes.append(change)
        held = set()
        for hold in pool.holds:
            host, port = split_host_port(hold.address, "hold address")
            backend_id = backend_id_for(await _ip(host), port)
            held.add(backend_id)
            have = backends.get(backend_id)
            if have is None:
                result.pending.append((pool.name, hold.address))
            elif have.state is not BackendState.DISABLED:
                result.changes.append(
                    f"pool {pool.name}: hold on {hold.address}: {have.state.value} -> disabled"
                )
                if not dry_run:
                    await transitions.apply(pool.name, backend_id, t.DISABLE, actor=actor)
        if prune:
            await _prune(store, transitions, pool.name, backends, static_ids, held, actor,
                         dry_run, result)  # fmt: skip
    return result


async def _prune(
    store: StatePort,
    transitions: t.BackendTransitions,
    pool: str,
    backends: dict[str, Backend],
    static_ids: set[str],
    held: set[str],
    actor: str,
    dry_run: bool,
    result: ApplyResult,
) -> None:
    """Removes the pool's static backends and lifts its holds that the
    document does not list."""
    for backend_id, b in sorted(backends.items()):
        if b.static and backend_id not in static_ids:
            result.changes.append(f"pool {pool}: static backend {_address(b)}: removed (pruned)")
            if not dry_run:
                await store.remove_backend(pool, backend_id, actor=actor)
        elif b.state is BackendState.DISABLED and backend_id not in held:
            result.changes.append(f"pool {pool}: hold on {_address(b)}: lifted (pruned)")
            if not dry_run:
                await transitions.apply(pool, backend_id, t.ENABLE, actor=actor)


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


def check_state_file(value: str) -> str:
    """A state file that exists and parses, or ""."""
    if not value.strip():
        return ""
    path = readable_file(value, "state file")
    load(path)  # a StateError (a ValueError) says where the document is wrong
    return path


# A setting naming a state file (the balancer's and the admin API's --state-file).
StateFile = Annotated[str, AfterValidator(check_state_file)]
