"""Outlier detection: the A50 judgements (pure), and the ejection script
against a real Redis (limits, lengthening ejections, their end)."""

from __future__ import annotations

import asyncio

import pytest

from lookaside_registry import BackendState, PoolConfig, RegistryStore
from lookaside_registry.health import HealthStore
from lookaside_registry.machine import Outcome
from lookaside_registry.outlier import (
    Outcomes,
    OutlierStore,
    Verdict,
    judge,
    judge_latency,
    outcome_fields,
    parse_outcomes,
    unagreed,
)

CFG = PoolConfig.from_flat("p", outlier_min_hosts=3, outlier_request_volume=10)


def test_failure_percentage_ejects_the_backend_that_loses_calls() -> None:
    outcomes = {
        "a": Outcomes(100, 100),
        "b": Outcomes(100, 99),
        "c": Outcomes(100, 30, failed_to_send=20),
    }
    verdicts = judge(outcomes, CFG.updated(outlier_stdev_factor=0))
    assert [v.backend_id for v in verdicts] == ["c"]
    assert "70 of 100 calls lost (20 failed to send)" in verdicts[0].detail


def test_failure_percentage_threshold_is_strict() -> None:
    outcomes = {"a": Outcomes(100, 100), "b": Outcomes(100, 100), "c": Outcomes(100, 50)}
    cfg = CFG.updated(outlier_stdev_factor=0, outlier_failure_percent=50)
    assert judge(outcomes, cfg) == []
    outcomes["c"] = Outcomes(100, 49)
    assert [v.backend_id for v in judge(outcomes, cfg)] == ["c"]


def test_success_rate_needs_a_spread_pool() -> None:
    # Ten backends: one delivering 80% sits far below the others' 99-100%.
    outcomes = {f"b{i}": Outcomes(200, 200 - (i % 2)) for i in range(9)}
    outcomes["slow"] = Outcomes(200, 160)
    cfg = CFG.updated(outlier_failure_percent=0)
    verdicts = judge(outcomes, cfg)
    assert [v.backend_id for v in verdicts] == ["slow"]
    assert verdicts[0].detail.startswith("success rate 80.0% below")
    # With the factor off, the 20% loss is under the failure threshold.
    assert judge(outcomes, cfg.updated(outlier_stdev_factor=0)) == []


def test_volume_and_min_hosts_gate_every_judgement() -> None:
    outcomes = {"a": Outcomes(100, 100), "b": Outcomes(100, 100), "c": Outcomes(9, 0)}
    # c has too few calls to be judged; then only two backends qualify.
    assert judge(outcomes, CFG) == []
    outcomes["c"] = Outcomes(10, 0)
    assert [v.backend_id for v in judge(outcomes, CFG)] == ["c"]
    assert judge(outcomes, CFG.updated(outlier_min_hosts=4)) == []


def test_outcome_fields_round_trip() -> None:
    raw = {k.encode(): str(v).encode() for k, v in outcome_fields("abc123", 7, 5, 1).items()}
    assert parse_outcomes(raw) == {"abc123": Outcomes(7, 5, 1)}
    evidence = outcome_fields("abc123", 9, 0, 0, 9, evidence=True)
    raw.update({k.encode(): str(v).encode() for k, v in evidence.items()})
    assert parse_outcomes(raw) == {"abc123": Outcomes(7, 5, 1)}
    assert parse_outcomes(raw, evidence=True) == {"abc123": Outcomes(9, 0, 0, 9)}


def test_a_backend_whose_calls_all_time_out_is_an_outlier_at_any_volume() -> None:
    outcomes = {
        "a": Outcomes(100, 100),
        "b": Outcomes(100, 99),
        "c": Outcomes(3, 0, deadline_exceeded=3),
        "d": Outcomes(4, 1, deadline_exceeded=3),  # one call answered: not all
    }
    verdicts = judge(outcomes, CFG)
    assert [v.backend_id for v in verdicts] == ["c"]
    assert "all 3 calls timed out" in verdicts[0].detail
    # Even with no other backend to compare with.
    assert [v.backend_id for v in judge({"c": Outcomes(1, 0, 0, 1)}, CFG)] == ["c"]


def test_reported_outcomes_eject_only_with_enough_accusing_streams() -> None:
    outcomes = {"a": Outcomes(100, 100), "b": Outcomes(100, 100), "c": Outcomes(100, 0)}
    cfg = CFG.updated(outlier_stdev_factor=0)
    assert [v.backend_id for v in judge(outcomes, cfg)] == ["c"]
    assert judge(outcomes, cfg, {"c": 1}) == []
    assert unagreed(outcomes, cfg, {"c": 1}) == ["c"]
    verdicts = judge(outcomes, cfg, {"c": 2})
    assert [v.backend_id for v in verdicts] == ["c"]
    assert "reported by 2 client streams" in verdicts[0].detail
    assert judge(outcomes, cfg.updated(outlier_min_reporters=3), {"c": 2}) == []


def test_latency_against_the_pool_is_judged_when_asked() -> None:
    from lookaside_registry.model import Backend, PoolSnapshot

    def backend(i: int, latency: float) -> Backend:
        return Backend(id=f"b{i}", pool="p", host="h", ip=f"10.0.0.{i}", port=80,
                       latency_ewma_ms=latency)  # fmt: skip

    snap = PoolSnapshot("p", 1, CFG, tuple(backend(i, 5.0) for i in range(3)) + (backend(3, 80.0),))
    assert judge_latency(snap, CFG) == []  # off by default
    verdicts = judge_latency(snap, CFG.updated(outlier_latency_factor=10))
    assert [v.backend_id for v in verdicts] == ["b3"]
    assert judge_latency(snap, CFG.updated(outlier_latency_factor=20)) == []


asyncio_test = pytest.mark.asyncio(loop_scope="session")


async def _pool(
    store: RegistryStore, pool: str, n: int, **cfg: int
) -> tuple[PoolConfig, list[str]]:
    config = PoolConfig.from_flat(pool, **cfg)
    await store.put_pool(config)
    ids = []
    for i in range(n):
        lease = await store.register(pool=pool, host="h", ip=f"10.9.0.{i + 1}", port=80)
        ids.append(lease.backend_id)
    return config, ids


async def _states(store: RegistryStore, pool: str) -> dict[str, BackendState]:
    snap = await store.snapshot(pool)
    assert snap is not None
    return {b.id: b.state for b in snap.backends}


@asyncio_test
@pytest.mark.parametrize("cluster", [False, True], ids=["redis", "cluster"])
async def test_the_judge_reads_differences_and_resets_nothing(
    request: pytest.FixtureRequest, cluster: bool, pool_name: str
) -> None:
    url = request.getfixturevalue("redis_cluster_url" if cluster else "redis_url")
    store = RegistryStore.from_url(url, cluster=cluster)
    try:
        _, ids = await _pool(store, pool_name, 1)
        bid = ids[0]
        both = {**outcome_fields(bid, 10, 4, 2), **outcome_fields(bid, 10, 4, 2, evidence=True)}
        await store.add_reports(pool_name, "b1", 1, {}, both, [f"{bid}|s1", f"{bid}|s2"])
        await store.add_reports(pool_name, "b2", 1, {}, outcome_fields("0123456789ab", 3, 3, 0))
        outliers = OutlierStore(store)
        first = await outliers.read_interval(pool_name, 10_000)
        assert first.evidence == {bid: Outcomes(10, 4, 2)} and first.accusers == {bid: 2}
        # Nothing new since: nothing to judge, and no one accused since.
        again = await outliers.read_interval(pool_name, 10_000)
        assert again.evidence == {} and again.accusers == {}
        await store.add_reports(
            pool_name, "b3", 1, {}, outcome_fields(bid, 5, 0, 0, 5, evidence=True), [f"{bid}|s1"]
        )
        third = await outliers.read_interval(pool_name, 10_000)
        assert third.evidence == {bid: Outcomes(5, 0, 0, 5)} and third.accusers == {bid: 1}
        # The display totals are whole for every other reader; the counters
        # of a backend that is gone were dropped.
        assert await store.outcome_counts(pool_name) == {bid: Outcomes(10, 4, 2)}
    finally:
        await store.close()


@asyncio_test
async def test_max_ejection_percent_lets_one_go_and_holds_the_rest(
    redis_url: str, pool_name: str
) -> None:
    store = RegistryStore.from_url(redis_url)
    try:
        config, ids = await _pool(store, pool_name, 4, outlier_max_ejection_percent=10)
        outliers = OutlierStore(store)
        verdicts = [Verdict(ids[0], "lost"), Verdict(ids[1], "lost")]
        result = await outliers.sweep(config, verdicts, max_share=0.5)
        assert result.ejected == [ids[0]] and result.held == [ids[1]]
        states = await _states(store, pool_name)
        assert states[ids[0]] is BackendState.EJECTED
        assert states[ids[1]] is BackendState.SERVING
        events = await store.events(pool_name)
        assert any(
            e["kind"] == "outlier_held" and "already ejected (max 10%)" in e["detail"]
            for e in events
        )
        # Judged again: no second event while the limit keeps it.
        await outliers.sweep(config, [Verdict(ids[1], "lost")], max_share=0.5)
        kinds = [e["kind"] for e in await store.events(pool_name)]
        assert kinds.count("outlier_held") == 1
        assert any(e["kind"] == "ejected" and e["backend"] == ids[0] for e in events)
    finally:
        await store.close()


@asyncio_test
async def test_panic_guard_counts_unhealthy_and_ejected_together(
    redis_url: str, pool_name: str
) -> None:
    store = RegistryStore.from_url(redis_url)
    try:
        config, ids = await _pool(store, pool_name, 4, outlier_max_ejection_percent=100)
        health = HealthStore(store)
        assert await health.set_health(pool_name, ids[0], False) is Outcome.CHANGED
        outliers = OutlierStore(store)
        result = await outliers.sweep(
            config, [Verdict(ids[1], "lost"), Verdict(ids[2], "lost")], max_share=0.5
        )
        # 1 unhealthy + 1 ejected is half of four: the third is held.
        assert result.ejected == [ids[1]] and result.held == [ids[2]]
        # And health checking may not take another one either.
        assert await health.set_health(pool_name, ids[3], False) is Outcome.HELD
        states = await _states(store, pool_name)
        assert sum(s is BackendState.SERVING for s in states.values()) == 2
    finally:
        await store.close()


@asyncio_test
async def test_ejections_lengthen_with_repeats_and_end_on_time(
    redis_url: str, pool_name: str
) -> None:
    store = RegistryStore.from_url(redis_url)
    try:
        config, ids = await _pool(
            store,
            pool_name,
            3,
            outlier_max_ejection_percent=50,
            # Seconds, not tenths: "a sweep between intervals leaves it
            # ejected" must hold on a loaded machine too.
            outlier_base_ejection_ms=2000,
            outlier_max_ejection_ms=3000,
        )
        outliers = OutlierStore(store)
        sick = ids[0]

        async def backend() -> dict:  # type: ignore[type-arg]
            snap = await store.snapshot(pool_name)
            assert snap is not None
            return {b.id: b for b in snap.backends}[sick]  # type: ignore[return-value]

        # base x 1, then base x 2 capped at max, then the cap again.
        for n, span in ((1, 2000), (2, 3000), (3, 3000)):
            result = await outliers.sweep(config, [Verdict(sick, "lost")], max_share=0.5)
            assert result.ejected == [sick]
            assert (await backend()).ejections == n
            last = (await store.events(pool_name))[0]
            assert last["kind"] == "ejected"
            assert last["detail"] == f"lost; for {span} ms (ejection {n})"
            # Not over yet: a sweep between intervals leaves it ejected.
            assert (await outliers.sweep(config, None, max_share=0.5)).ended == []
            await asyncio.sleep(span / 1000 + 0.05)
            assert (await outliers.sweep(config, None, max_share=0.5)).ended == [sick]
            assert (await backend()).state is BackendState.SERVING
        # An interval with too few calls to judge leaves the count alone;
        # each one it passes lowers it by one.
        await outliers.sweep(config, [], max_share=0.5)
        assert (await backend()).ejections == 3
        await outliers.sweep(config, [], passed=[sick], max_share=0.5)
        assert (await backend()).ejections == 2
        events = [e["kind"] for e in await store.events(pool_name)]
        assert events.count("ejected") == 3 and events.count("ejection_ended") == 3
    finally:
        await store.close()


@asyncio_test
async def test_running_ejection_survives_reregistration(redis_url: str, pool_name: str) -> None:
    store = RegistryStore.from_url(redis_url)
    try:
        config, ids = await _pool(store, pool_name, 3, outlier_max_ejection_percent=50)
        outliers = OutlierStore(store)
        await outliers.sweep(config, [Verdict(ids[0], "lost")], max_share=0.5)
        await store.register(pool=pool_name, host="h", ip="10.9.0.1", port=80)
        snap = await store.snapshot(pool_name)
        assert snap is not None
        b = {b.id: b for b in snap.backends}[ids[0]]
        assert b.state is BackendState.EJECTED and b.ejections == 1
    finally:
        await store.close()
