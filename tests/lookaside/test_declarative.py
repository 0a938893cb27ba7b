"""Declared operator state against real Redis: apply is idempotent, export
gives back what was applied, holds wait for their backend, StateKeeper
restores the state after Redis lost it, and bad documents name the field."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from lookaside.cli import main
from lookaside.redis_process import RedisProcess
from lookaside_registry.errors import Unavailable
from lookaside_registry.model import BackendState
from lookaside_registry.store import RegistryStore
from server_common import declarative as d
from server_common.state_keeper import StateKeeper


def document(pool: str) -> d.StateDocument:
    return d.parse(
        f"""
pools:
  - name: {pool}
    config:
      policy: least_loaded
      lease_ttl_ms: 5000
      drops: [{{token: overload, per_mille: 50}}]
      health_checks: {{interval_ms: 500}}
      subset_size: 20
    static_backends:
      - {{host: 127.0.0.1, port: 7001, weight: 3, zone: z1}}
    holds:
      - {{address: "127.0.0.1:7002"}}
"""
    )


@pytest_asyncio.fixture
async def store(redis_url: str) -> AsyncIterator[RegistryStore]:
    s = RegistryStore.from_url(redis_url)
    yield s
    await s.close()


async def backend(store: RegistryStore, pool: str, port: int) -> BackendState:
    snap = await store.snapshot(pool)
    assert snap is not None
    return {b.port: b.state for b in snap.backends}[port]


@pytest.mark.asyncio
async def test_apply_is_idempotent_and_export_round_trips(
    store: RegistryStore, pool_name: str
) -> None:
    doc = document(pool_name)
    first = await d.apply(store, doc)
    assert f"pool {pool_name}: created" in first.changes
    assert f"pool {pool_name}: policy: round_robin -> least_loaded" in first.changes
    assert f"pool {pool_name}: static backend 127.0.0.1:7001: added (weight 3)" in first.changes
    assert first.pending == [(pool_name, "127.0.0.1:7002")]
    version = (await store.versions([pool_name]))[pool_name]

    second = await d.apply(store, doc)
    assert second.changes == []
    assert (await store.versions([pool_name]))[pool_name] == version  # nothing written

    exported = {p.name: p for p in (await d.export(store)).pools}[pool_name]
    assert exported.config.policy == "least_loaded"
    assert exported.config.health_checks.interval_ms == 500
    assert exported.config.subset_size == 20
    config = await store.get_pool(pool_name)
    assert config is not None and config.subset_size == 20
    assert [(b.host, b.port, b.weight, b.zone) for b in exported.static_backends] == [
        ("127.0.0.1", 7001, 3, "z1")
    ]
    # The exported text parses back to the same document.
    again = d.parse(d.dump(d.StateDocument(pools=[exported])))
    assert again.pools[0].model_dump() == exported.model_dump()


@pytest.mark.asyncio
async def test_a_hold_waits_for_its_backend(store: RegistryStore, pool_name: str) -> None:
    doc = document(pool_name)
    await d.apply(store, doc)
    await store.register(pool=pool_name, host="127.0.0.1", ip="127.0.0.1", port=7002)
    assert await backend(store, pool_name, 7002) is BackendState.SERVING
    result = await d.apply(store, doc)
    assert result.pending == []
    assert result.changes == [f"pool {pool_name}: hold on 127.0.0.1:7002: serving -> disabled"]
    assert await backend(store, pool_name, 7002) is BackendState.DISABLED
    exported = {p.name: p for p in (await d.export(store)).pools}[pool_name]
    assert [h.address for h in exported.holds] == ["127.0.0.1:7002"]


@pytest.mark.asyncio
async def test_keeper_restores_state_after_redis_comes_back_empty(pool_name: str) -> None:
    with RedisProcess(persist=True) as private:
        store = RegistryStore.from_url(private.url)
        try:
            keeper = StateKeeper(store, document(pool_name))
            await keeper.tick()  # applied at start
            await store.register(pool=pool_name, host="127.0.0.1", ip="127.0.0.1", port=7002)
            await keeper.tick()  # the pending hold, once its backend registered
            assert await backend(store, pool_name, 7002) is BackendState.DISABLED
            # An operator change made after the start, seen by the keeper.
            config = await store.get_pool(pool_name)
            assert config is not None
            import dataclasses

            await store.put_pool(dataclasses.replace(config, lease_ttl_ms=7000))
            await keeper.tick()

            private.restart(wipe=True)  # Redis back, empty
            await store.redis.connection_pool.disconnect()
            # The backend registers again before the keeper looks: the pool
            # is re-created with default settings.
            await store.register(pool=pool_name, host="127.0.0.1", ip="127.0.0.1", port=7002)
            assert (await store.get_pool(pool_name)).policy == "round_robin"  # type: ignore[union-attr]

            await keeper.tick()
            restored = await store.get_pool(pool_name)
            assert restored is not None
            assert (restored.policy, restored.lease_ttl_ms) == ("least_loaded", 7000)
            assert await backend(store, pool_name, 7001) is BackendState.SERVING  # static
            assert await backend(store, pool_name, 7002) is BackendState.DISABLED  # the hold
            assert keeper.restores == 2
        finally:
            await store.close()


class FailingOnce(RegistryStore):
    """The real store; its next list_pools fails as the registry does when
    a node is down (the marker on another node still answers)."""

    fail = False

    async def list_pools(self) -> list[str]:
        if self.fail:
            self.fail = False
            raise Unavailable("Redis failed (injected)")
        return await super().list_pools()


@pytest.mark.asyncio
async def test_keeper_keeps_running_when_the_registry_fails_mid_tick(
    redis_url: str, pool_name: str
) -> None:
    store = FailingOnce.from_url(redis_url)
    assert isinstance(store, FailingOnce)
    keeper = StateKeeper(store, document(pool_name), interval=0.05).start()
    try:
        for _ in range(200):
            if keeper.last_seen is not None:
                break
            await asyncio.sleep(0.05)
        assert keeper.last_seen is not None  # applied, then exported
        store.fail = True
        for _ in range(200):
            if not store.fail:
                break
            await asyncio.sleep(0.05)
        assert not store.fail  # the failure reached the keeper
        keeper.last_seen = None
        for _ in range(200):
            if keeper.last_seen is not None:
                break
            await asyncio.sleep(0.05)
        assert keeper.last_seen is not None  # and it went on exporting
    finally:
        await keeper.stop()
        await store.close()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pools: [{name: p, config: {policy: fastest}}]", "pools.0.config.policy"),
        ("pools: [{name: p, colour: red}]", "pools.0.colour: Extra inputs are not permitted"),
        ("pools: [{name: p}, {name: p}]", "pool 'p' appears more than once"),
        ("pools: [{name: p, holds: [{address: nowhere}]}]", "pools.0.holds.0.address"),
        (
            "pools: [{name: p, config: {subset_size: 1001}}]",
            "pools.0.config.subset_size: Input should be less than or equal to 1000",
        ),
        ("[1, 2]", "must be a mapping"),
        ("pools: [", "is not YAML or JSON"),
    ],
)
def test_bad_documents_name_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(d.StateError) as exc:
        d.parse(text, "pools.yaml")
    assert message in str(exc.value)


def test_apply_and_export_commands(
    redis_url: str, pool_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pools.yaml"
    path.write_text(d.dump(document(pool_name)))
    assert main(["apply", "-f", str(path), "--redis-url", redis_url]) == 0
    assert f"changed  pool {pool_name}: lease_ttl_ms: 10000 -> 5000" in capsys.readouterr().out
    assert main(["apply", "-f", str(path), "--redis-url", redis_url]) == 0
    assert "nothing to change" in capsys.readouterr().out
    assert main(["export", "--format", "json", "--redis-url", redis_url]) == 0
    exported = d.parse(capsys.readouterr().out)
    assert pool_name in [p.name for p in exported.pools]

    bad = tmp_path / "bad.yaml"
    bad.write_text("pools: [{name: x, config: {policy: fastest}}]")
    assert main(["apply", "-f", str(bad), "--redis-url", redis_url]) == 2
    assert "pools.0.config.policy" in capsys.readouterr().err


async def settings_of(store: RegistryStore, pool: str) -> dict[str, object]:
    config = await store.get_pool(pool)
    assert config is not None
    return d.PoolSettings.from_config(config).model_dump(mode="json")


@pytest.mark.asyncio
async def test_a_partial_config_changes_only_the_keys_it_names(
    store: RegistryStore, pool_name: str
) -> None:
    await d.apply(
        store,
        d.parse(
            f"""
pools:
  - name: {pool_name}
    config:
      policy: least_loaded
      report_interval_ms: 5000
      health_checks: {{interval_ms: 500, timeout_ms: 400}}
"""
        ),
    )
    partial = d.parse(
        f"""
pools:
  - name: {pool_name}
    config:
      drops: [{{token: overload, per_mille: 20}}]
      health_checks: {{timeout_ms: 300}}
"""
    )
    result = await d.apply(store, partial)
    assert result.changes == [
        f'pool {pool_name}: drops: [] -> [{{"token":"overload","per_mille":20}}]',
        f"pool {pool_name}: health_checks.timeout_ms: 400 -> 300",
    ]
    after = await settings_of(store, pool_name)
    assert after["policy"] == "least_loaded"  # not named: kept
    assert after["report_interval_ms"] == 5000
    assert after["health_checks"]["interval_ms"] == 500  # type: ignore[index]
    assert after["health_checks"]["timeout_ms"] == 300  # type: ignore[index]
    # Naming a key with its default value is how one setting goes back.
    reset = d.parse(f"pools: [{{name: {pool_name}, config: {{report_interval_ms: 10000}}}}]")
    result = await d.apply(store, reset)
    assert result.changes == [f"pool {pool_name}: report_interval_ms: 5000 -> 10000"]
    assert (await settings_of(store, pool_name))["policy"] == "least_loaded"


@pytest.mark.asyncio
async def test_dry_run_lists_the_plan_and_writes_nothing(
    store: RegistryStore, pool_name: str
) -> None:
    await d.apply(store, document(pool_name))
    version = (await store.versions([pool_name]))[pool_name]
    change = d.parse(
        f"""
pools:
  - name: {pool_name}
    config: {{policy: round_robin}}
    static_backends: [{{host: 127.0.0.1, port: 7001, weight: 5, zone: z1}}]
"""
    )
    plan = await d.apply(store, change, dry_run=True)
    assert plan.changes == [
        f"pool {pool_name}: policy: least_loaded -> round_robin",
        f"pool {pool_name}: static backend 127.0.0.1:7001: weight 3 -> 5",
    ]
    assert (await store.versions([pool_name]))[pool_name] == version
    assert (await settings_of(store, pool_name))["policy"] == "least_loaded"
    assert (await d.apply(store, change)).changes == plan.changes  # the plan is what happens


@pytest.mark.asyncio
async def test_prune_removes_only_what_the_named_pools_leave_out(
    store: RegistryStore, pool_name: str
) -> None:
    other = f"{pool_name}-other"
    await d.apply(store, document(pool_name))
    await d.apply(store, document(other))
    await store.register(pool=pool_name, host="127.0.0.1", ip="127.0.0.1", port=7002)
    await d.apply(store, document(pool_name))  # the hold, now that 7002 registered
    assert await backend(store, pool_name, 7002) is BackendState.DISABLED
    lean = d.parse(f"pools: [{{name: {pool_name}, config: {{lease_ttl_ms: 5000}}}}]")
    assert (await d.apply(store, lean)).changes == []  # without --prune: nothing removed
    result = await d.apply(store, lean, prune=True)
    assert f"pool {pool_name}: policy: least_loaded -> round_robin" in result.changes
    assert f"pool {pool_name}: static backend 127.0.0.1:7001: removed (pruned)" in result.changes
    assert f"pool {pool_name}: hold on 127.0.0.1:7002: lifted (pruned)" in result.changes
    after = await settings_of(store, pool_name)
    assert (after["policy"], after["lease_ttl_ms"], after["drops"]) == ("round_robin", 5000, [])
    snap = await store.snapshot(pool_name)
    assert snap is not None and [b.port for b in snap.backends] == [7002]
    assert snap.backends[0].state is not BackendState.DISABLED
    assert (await settings_of(store, other))["policy"] == "least_loaded"  # not named: untouched


def test_apply_command_dry_run_and_prune(
    redis_url: str, pool_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pools.yaml"
    path.write_text(d.dump(document(pool_name)))
    assert main(["apply", "-f", str(path), "--redis-url", redis_url]) == 0
    lean = tmp_path / "lean.yaml"
    lean.write_text(f"pools: [{{name: {pool_name}, config: {{lease_ttl_ms: 5000}}}}]")
    capsys.readouterr()
    argv = ["apply", "-f", str(lean), "--redis-url", redis_url, "--prune", "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"would change  pool {pool_name}: policy: least_loaded -> round_robin" in out
    assert "dry run: nothing was written" in out
    assert main(["apply", "-f", str(lean), "--redis-url", redis_url]) == 0
    assert "nothing to change" in capsys.readouterr().out


def test_apply_and_export_without_a_redis_refuse(
    pool_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pools.yaml"
    path.write_text(d.dump(document(pool_name)))
    for argv in (["apply", "-f", str(path)], ["export"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "no Redis given: pass --redis-url (env LOOKASIDE_STATE_REDIS_URL)" in err
        assert len(err.strip().splitlines()) == 1


def test_export_uses_the_context(
    redis_url: str, pool_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lookaside import context

    context.save(context.Context(redis_url=redis_url))
    path = tmp_path / "pools.yaml"
    path.write_text(d.dump(document(pool_name)))
    assert main(["apply", "-f", str(path)]) == 0
    capsys.readouterr()
    assert main(["export"]) == 0
    assert pool_name in [p.name for p in d.parse(capsys.readouterr().out).pools]
