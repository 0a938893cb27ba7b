"""Outlier detection end to end: a backend that keeps answering its health
checks but loses its callers' calls is ejected on the thin client's
per-backend reports, and comes back when its ejection ends. Real balancer,
Redis, backends and LookasideChannel; health checking is off, so the
ejection can only come from the reports."""

from __future__ import annotations

import json
import threading
import time

import grpc

from client_lib import LookasideChannel
from lookaside_proto.lb.v1 import backend_stats_pb2 as bs
from lookaside_proto.lb.v1 import load_balancer_pb2 as lb
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from lookaside_registry import keys
from lookaside_registry.model import PoolConfig
from tests.support import BalancerHandle, LbStream, register_all, start_backends, wait_until

FAST = dict(
    report_interval_ms=1000,
    outlier_interval_ms=1000,
    outlier_base_ejection_ms=2000,
    outlier_min_hosts=3,
    outlier_request_volume=5,
    # One client here: its reports alone may eject (the default asks two).
    outlier_min_reporters=1,
)


def state(redis_client, pool: str, backend_id: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return json.loads(redis_client.hget(keys.backends(pool), backend_id))  # type: ignore[no-any-return]


def test_backend_losing_calls_is_ejected_then_let_back(
    balancer: BalancerHandle, backends, pool_name: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    three = start_backends(backends, 3)
    balancer.run(balancer.store.put_pool(PoolConfig.from_flat(pool_name, **FAST)))  # type: ignore[arg-type]
    ids = register_all(balancer, pool_name, three)
    sick = three[2]
    sick_address = f"127.0.0.1:{sick.port}"
    sick.hang.set()
    with LookasideChannel(pool_name, balancer.address) as channel:
        assert channel.wait_for_list(10)
        wait_until(lambda: len({a for a, _ in channel.backends()}) == 3)
        stub = rg_grpc.RouteGuideStub(channel)
        lost = 0

        def call_until(done) -> None:  # type: ignore[no-untyped-def]
            nonlocal lost
            deadline = time.monotonic() + 30
            while not done():
                assert time.monotonic() < deadline, "condition not met within 30s"
                try:
                    stub.GetFeature(rg.Point(), timeout=0.1)
                except grpc.RpcError as exc:
                    assert exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED
                    lost += 1

        call_until(lambda: sick_address not in {a for a, _ in channel.backends()})
        assert lost > 0
        b = state(redis_client, pool_name, ids[sick.port])
        assert b["state"] == "ejected" and b["ejections"] == 1
        assert "calls lost" in b["health_detail"]
        # The others were judged with it and stayed.
        for healthy in three[:2]:
            assert state(redis_client, pool_name, ids[healthy.port])["state"] == "serving"
        # While it is out, every call lands.
        names = {stub.GetFeature(rg.Point(), timeout=5).name for _ in range(20)}
        assert names == {three[0].name, three[1].name}
        sick.hang.clear()
        call_until(lambda: sick_address in {a for a, _ in channel.backends()})
        assert state(redis_client, pool_name, ids[sick.port])["state"] == "serving"
        names = {stub.GetFeature(rg.Point(), timeout=5).name for _ in range(30)}
        assert names == {b.name for b in three}
    kinds = [e["kind"] for e in balancer.run(balancer.store.events(pool_name))]
    assert kinds.index("ejection_ended") < kinds.index("ejected")


def _stats(*entries: bs.BackendCallStats) -> lb.LoadBalanceRequest:
    stats = lb.ClientStats(num_calls_started=30, num_calls_finished=30)
    if entries:
        ext = bs.ClientStatsExtension(calls_per_backend=entries)
        stats.MergeFromString(ext.SerializeToString())
    return lb.LoadBalanceRequest(client_stats=stats)


def test_reports_with_and_without_the_extension(
    balancer: BalancerHandle, backends, pool_name: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    one = start_backends(backends, 1)
    ids = register_all(balancer, pool_name, one)
    token = f"{ids[one[0].port]}.{balancer.server.epoch}"
    stream = LbStream(balancer.address, pool_name)
    stream.next_list()
    # A stock client's report: counted in the pool's load, no outcomes.
    stream.send(_stats())
    wait_until(lambda: int(redis_client.hget(keys.load_total(pool_name), "finished") or 0) == 30)
    assert not redis_client.exists(keys.outcomes(pool_name))
    # The thin client's: outcomes per backend; tokens naming no backend
    # are skipped, and counts are clamped to what finished.
    stream.send(
        _stats(
            bs.BackendCallStats(
                load_balance_token=token,
                num_calls_finished=30,
                num_calls_finished_known_received=25,
                num_calls_finished_with_client_failed_to_send=3,
            ),
            bs.BackendCallStats(load_balance_token="not-a-backend", num_calls_finished=9),
            bs.BackendCallStats(
                load_balance_token=token, num_calls_finished=1, num_calls_finished_known_received=7
            ),
        )
    )
    wait_until(lambda: redis_client.exists(keys.outcomes(pool_name)))
    raw = redis_client.hgetall(keys.outcomes(pool_name))
    bid = ids[one[0].port]
    # Display counts, and the same as evidence (this pool asks no credential).
    assert {k: int(v) for k, v in raw.items()} == {
        f"{bid}:f": 31, f"{bid}:r": 26, f"{bid}:s": 3,
        f"{bid}:ef": 31, f"{bid}:er": 26, f"{bid}:es": 3,
    }  # fmt: skip
    assert int(redis_client.hget(keys.load_total(pool_name), "finished")) == 60
    # Field 1001 holding bytes that are no extension: the report still
    # counts, the outcomes are left alone, and the stream stays open.
    tag = (1001 << 3) | 2
    junk = bytes([0x80 | (tag & 0x7F), tag >> 7, 3, 0xFF, 0xFF, 0xFF])
    stats = lb.ClientStats.FromString(_stats().client_stats.SerializeToString() + junk)
    stream.send(lb.LoadBalanceRequest(client_stats=stats))
    wait_until(lambda: int(redis_client.hget(keys.load_total(pool_name), "finished") or 0) == 90)
    assert int(redis_client.hget(keys.outcomes(pool_name), f"{ids[one[0].port]}:f")) == 31
    stream.send(_stats())
    wait_until(lambda: int(redis_client.hget(keys.load_total(pool_name), "finished") or 0) == 120)
    stream.close()


def test_a_hanging_backend_is_ejected_below_the_request_volume(
    balancer: BalancerHandle, backends, pool_name: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    """Two clients, each a few calls a second: the backend that holds every
    call until its deadline never reaches request_volume (20) in an
    interval, and is ejected all the same: all its calls time out."""
    three = start_backends(backends, 3)
    config = PoolConfig.from_flat(
        pool_name, report_interval_ms=1000, outlier_interval_ms=1000, health_checks=False
    )
    assert config.outlier_detection.request_volume == 20
    assert config.outlier_detection.min_reporters == 2
    balancer.run(balancer.store.put_pool(config))
    ids = register_all(balancer, pool_name, three)
    sick = three[2]
    sick.hang.set()
    stop = threading.Event()
    timeouts: list[int] = [0, 0]

    def client(i: int) -> None:
        with LookasideChannel(pool_name, balancer.address) as channel:
            assert channel.wait_for_list(10)
            stub = rg_grpc.RouteGuideStub(channel)
            while not stop.is_set():
                try:
                    stub.GetFeature(rg.Point(), timeout=0.2)
                except grpc.RpcError as exc:
                    assert exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED
                    timeouts[i] += 1
                stop.wait(0.2)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: state(redis_client, pool_name, ids[sick.port])["state"] == "ejected",
                   timeout=30)  # fmt: skip
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    b = state(redis_client, pool_name, ids[sick.port])
    assert "calls timed out" in b["health_detail"]
    assert all(n < 20 * 30 for n in timeouts) and all(n > 0 for n in timeouts)
    for healthy in three[:2]:
        assert state(redis_client, pool_name, ids[healthy.port])["state"] == "serving"
