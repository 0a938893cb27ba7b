"""The list builder: weights as smooth repetition, drops spread evenly."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balancer_server.lists import build_entries, interleave, slot_counts
from lookaside_registry.model import Backend, BackendState, DropRate, PoolConfig, PoolSnapshot


def snapshot(weights: list[int], drops: tuple[DropRate, ...] = (), states=None) -> PoolSnapshot:  # type: ignore[no-untyped-def]
    states = states or [BackendState.SERVING] * len(weights)
    backends = tuple(
        Backend(
            id=f"b{i}", pool="p", host="h", ip=f"10.0.0.{i + 1}", port=8000 + i, weight=w, state=s
        )
        for i, (w, s) in enumerate(zip(weights, states, strict=True))
    )
    return PoolSnapshot("p", 1, PoolConfig(name="p", drops=drops), backends)


def test_equal_weights_give_the_shortest_list() -> None:
    entries = build_entries(snapshot([1, 1, 1]), "e1")
    assert [e.port for e in entries] == [8000, 8001, 8002]
    assert [e.token for e in entries] == ["b0.e1", "b1.e1", "b2.e1"]


def test_weights_are_repetition_without_runs() -> None:
    entries = build_entries(snapshot([1, 2, 3]), "e")
    counts = Counter(e.port for e in entries)
    assert counts == {8000: 1, 8001: 2, 8002: 3}
    ring = entries + entries[:1]
    assert all(a != b for a, b in zip(ring, ring[1:], strict=False))


def test_drops_are_spread_and_exact() -> None:
    entries = build_entries(snapshot([1, 1, 1], (DropRate("rate_limit", 100),)), "e")
    assert len(entries) == 10
    assert sum(e.drop for e in entries) == 1
    assert [e.token for e in entries if e.drop] == ["rate_limit"]


def test_only_serving_backends_are_listed() -> None:
    states = [BackendState.SERVING, BackendState.DRAINING, BackendState.DISABLED]
    entries = build_entries(snapshot([1, 1, 1], states=states), "e")
    assert [e.port for e in entries] == [8000]


def test_no_serving_backend_gives_no_list_rather_than_an_empty_one() -> None:
    from balancer_server.lists import pool_payload

    states = [BackendState.DRAINING]
    assert pool_payload(snapshot([1], states=states), "e") is None


def test_tokens_stay_under_50_bytes() -> None:
    entries = build_entries(snapshot([1]), "x" * 80)
    assert all(len(e.token.encode()) < 50 for e in entries)


@given(
    # least_loaded weights reach 100 x the registered weight (LOAD_AWARE_SCALE)
    weights=st.lists(st.integers(1, 100_000), min_size=1, max_size=12),
    drops=st.lists(st.integers(0, 300), max_size=3),
)
def test_slot_shares_match_weights(weights: list[int], drops: list[int]) -> None:
    backend_slots, drop_slots = slot_counts(weights, drops)
    total = sum(backend_slots) + sum(drop_slots)
    assert 0 < total <= 1000
    assert all(n >= 1 for n in backend_slots)
    # Each drop reason's share is within one slot of its rate.
    for p, n in zip(drops, drop_slots, strict=True):
        assert abs(n - total * p / 1000) <= 1
    # Backend shares follow weights within rounding of one slot each, plus
    # the floor of one slot for tiny weights: each slot given to a weight
    # whose share is under one is taken from the others.
    keep = sum(backend_slots)
    tiny = sum(1 for w in weights if keep * w / sum(weights) < 1)
    for w, n in zip(weights, backend_slots, strict=True):
        assert abs(n - keep * w / sum(weights)) <= max(2, 1 + tiny)


@pytest.mark.parametrize(
    ("weights", "drops"),
    [
        # The floor of one slot for tiny weights once made these 1,001-1,004
        # entries long, past the 1,000 a list may hold.
        ([2, 900, 1500, 4, 10], [406, 168, 333]),
        ([1, 1500, 10, 5, 7, 13, 14, 600, 1000, 9], [502, 430]),
        ([1500, 7, 9, 4, 2, 3000, 15], [5, 557, 255]),
        # Drops of 999 per mille leave fewer slots than backends.
        ([7, 11, 13], [999]),
    ],
)
def test_a_list_never_passes_its_length_limit(weights: list[int], drops: list[int]) -> None:
    backend_slots, drop_slots = slot_counts(weights, drops)
    assert sum(backend_slots) + sum(drop_slots) <= 1000
    assert all(n >= 1 for n in backend_slots)
    assert all(n >= 1 for n in drop_slots)


@given(st.lists(st.integers(1, 20), min_size=1, max_size=8))
def test_interleave_keeps_counts(counts: list[int]) -> None:
    items = [(chr(65 + i), c) for i, c in enumerate(counts)]
    out = interleave(items)
    assert Counter(out) == {k: c for k, c in items}


def test_load_aware_weights_deadband_and_floor() -> None:
    from balancer_server.lists import load_aware_weights

    def backends(*latencies: float) -> list[Backend]:
        return [
            Backend(
                id=f"b{i}", pool="p", host="h", ip="10.0.0.1", port=80 + i, latency_published_ms=lat
            )
            for i, lat in enumerate(latencies)
        ]

    assert load_aware_weights(backends(2.0, 2.9, 20.0)) == [
        100,
        100,
        1,
    ]  # 1.45x is noise; 10x is the floor
    assert load_aware_weights(backends(2.0, 6.0)) == [100, 12]  # 3x slower: (1.5/3)^3
    assert load_aware_weights(backends(0.0, 0.0)) == [1, 1]  # no reports: plain weights
    assert load_aware_weights(backends(4.0, 0.0)) == [100, 100]  # no report yet counts as fastest
