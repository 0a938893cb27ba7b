"""The chaos lab on a Redis Cluster of 3 masters and 3 replicas: the master
holding the pool's slot is SIGKILLed and its replica promoted while three
kinds of client call the pool's backends through two balancer replicas and
the DNS responder. Counts failed calls, never timings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lookaside.chaos.cluster import ClusterChaosLab
from lookaside.chaos.run import run_scenario
from lookaside_registry import keys
from tests.chaos.labs import CLIENTS, running


@pytest.fixture(scope="module")
def lab() -> Iterator[ClusterChaosLab]:
    lab = ClusterChaosLab(backends=3, clients=CLIENTS, rate=40.0, call_timeout=2.0)
    yield from running(lab)
    # Stopping the lab stops its Redis Cluster: no node outlives it.
    alive = [n.port for n in lab.redis_cluster.nodes if n.proc and n.proc.poll() is None]
    assert alive == [], f"cluster nodes still running after the lab stopped: {alive}"


@pytest.mark.timeout(150)
def test_the_pools_master_killed_loses_no_call(lab: ClusterChaosLab) -> None:
    cluster = lab.redis_cluster
    slot = cluster.keyslot(keys.config(lab.pool))
    before = cluster.master_of(slot)
    outcomes = run_scenario(lab, "cluster-failover", 2.0, 2.0)
    assert {o.client for o in outcomes} == set(CLIENTS)
    for o in outcomes:
        assert o.calls >= 20, o  # the load really ran through the window
    assert {o.client: dict(o.codes) for o in outcomes if o.failed} == {}
    # The replica took the slot over; repair brought the old master back
    # (as a replica) and every backend is serving.
    assert cluster.master_of(slot).port != before.port
    assert all(n.proc is not None and n.proc.poll() is None for n in cluster.nodes)
    assert lab.serving_count() == 3
