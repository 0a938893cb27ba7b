"""LRS (envoy.service.load_stats.v3) on the balancer's port: xDS clients'
load reports count into the same pool load as grpclb ClientStats, under
the source `xds` too, and are checked as grpclb reports are. A real
balancer and Redis; the client is a stock grpcio stub sending
LoadStatsRequests (the stock xDS client's own LRS stream is exercised in
tests/interop/test_lrs_stock.py)."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import load_report_pb2 as lr
from envoy.service.load_stats.v3 import lrs_pb2, lrs_pb2_grpc

from balancer_server import metrics
from balancer_server.lrs import UNCATEGORIZED
from balancer_server.report_ingest import MAX_CALLS_PER_SECOND
from lookaside_proto.lb.v1 import load_balancer_pb2 as lb
from lookaside_registry import keys
from lookaside_registry.model import DropRate, PoolConfig
from tests.support import BalancerHandle, LbStream, wait_until

CLIENT_TOKEN = "lrs-client-token-0123456789abcdef"
STOP = object()


class LrsStream:
    """An LRS stream from a stock grpcio stub; responses are read by a
    thread into a queue."""

    def __init__(
        self,
        address: str,
        node_id: str = "node-1",
        metadata: tuple[tuple[str, str], ...] | None = None,
        first: Any = None,
    ) -> None:
        self.channel = grpc.insecure_channel(address)
        self.requests: queue.Queue[Any] = queue.Queue()
        self.responses: queue.Queue[Any] = queue.Queue()
        if first is None:
            first = lrs_pb2.LoadStatsRequest(node=base_pb2.Node(id=node_id))
        self.requests.put(first)
        self.call = lrs_pb2_grpc.LoadReportingServiceStub(self.channel).StreamLoadStats(
            iter(self.requests.get, STOP), metadata=metadata
        )
        self.error: grpc.RpcError | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for response in self.call:
                self.responses.put(response)
        except grpc.RpcError as exc:
            self.error = exc
        self.responses.put(STOP)

    def next(self, timeout: float = 10.0) -> lrs_pb2.LoadStatsResponse:
        item = self.responses.get(timeout=timeout)
        if item is STOP:
            self.responses.put(STOP)
            if self.error is not None:
                raise self.error
            raise EOFError("stream ended")
        return item

    def send(self, *clusters: lr.ClusterStats) -> None:
        self.requests.put(lrs_pb2.LoadStatsRequest(cluster_stats=list(clusters)))

    def close(self) -> None:
        self.requests.put(STOP)
        self.call.cancel()
        self.channel.close()


def cluster(
    pool: str,
    issued: int = 0,
    ok: int = 0,
    failed: int = 0,
    drops: tuple[tuple[str, int], ...] = (),
    total_dropped: int | None = None,
    localities: int = 1,
) -> lr.ClusterStats:
    stats = lr.ClusterStats(cluster_name=pool, cluster_service_name=pool)
    for i in range(localities):
        share = 1 if i == 0 else 0
        stats.upstream_locality_stats.add(
            locality=base_pb2.Locality(zone=f"z{i}"),
            total_issued_requests=issued * share,
            total_successful_requests=ok * share,
            total_error_requests=failed * share,
        )
    for category, n in drops:
        stats.dropped_requests.add(category=category, dropped_count=n)
    stats.total_dropped_requests = (
        sum(n for _, n in drops) if total_dropped is None else total_dropped
    )
    return stats


def refused(reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "lookaside_balancer_lrs_reports_refused_total", {"reason": reason}
    )
    return value or 0.0


def total(redis_client: Any, pool: str) -> dict[str, int]:
    return {k: int(v) for k, v in redis_client.hgetall(keys.load_total(pool)).items()}


def put_pool(balancer: BalancerHandle, pool: str, **config: Any) -> None:
    balancer.run(balancer.store.put_pool(PoolConfig(name=pool, report_interval_ms=1000, **config)))
    wait_until(lambda: pool in balancer.server.watcher.snapshots)


@pytest.fixture
def lrs_streams() -> Iterator[list[LrsStream]]:
    opened: list[LrsStream] = []
    yield opened
    for s in opened:
        s.close()


def test_lrs_reports_count_beside_grpclb_reports_and_apart_by_source(
    balancer: BalancerHandle, redis_client: Any, pool_name: str, lrs_streams: list[LrsStream]
) -> None:
    put_pool(balancer, pool_name, drops=(DropRate("lb", 0),))
    balancer.run(
        balancer.store.register(pool=pool_name, host="127.0.0.1", ip="127.0.0.1", port=7101)
    )
    stream = LrsStream(balancer.address)
    lrs_streams.append(stream)
    first = stream.next()
    assert first.send_all_clusters
    assert first.load_reporting_interval.ToMilliseconds() == 1000
    stream.send(cluster(pool_name, issued=10, ok=7, failed=2, drops=(("lb", 3),)))
    grpclb = LbStream(balancer.address, pool_name)
    try:
        grpclb.next_list()
        grpclb.send(
            lb.LoadBalanceRequest(
                client_stats=lb.ClientStats(
                    num_calls_started=5, num_calls_finished=5, num_calls_finished_known_received=5
                )
            )
        )
        # xDS: started = issued + dropped, finished = ok + failed + dropped.
        wait_until(lambda: total(redis_client, pool_name).get("finished") == 12 + 5)
    finally:
        grpclb.close()
    got = total(redis_client, pool_name)
    assert got["started"] == 13 + 5
    assert got["known_received"] == 7 + 5
    assert got["reports"] == 2
    assert got["drop:lb"] == 3
    assert (got["xds:started"], got["xds:finished"], got["xds:known_received"]) == (13, 12, 7)
    assert (got["xds:reports"], got["xds:dropped"]) == (1, 3)
    ten_s = next(w for w in balancer.run(balancer.store.load_windows(pool_name)) if w.name == "10s")
    sources = ten_s.by_source()
    assert sources["xds"]["finished"] == 12
    assert sources["grpclb"]["finished"] == 5
    assert sources["grpclb"]["dropped"] == 0
    assert sources["xds"]["dropped"] == 3


def test_bad_reports_are_refused_and_counted_never_written(
    balancer: BalancerHandle, redis_client: Any, pool_name: str, lrs_streams: list[LrsStream]
) -> None:
    put_pool(balancer, pool_name, drops=(DropRate("lb", 0),))
    stream = LrsStream(balancer.address)
    lrs_streams.append(stream)
    stream.next()
    no_pool, too_large, unknown = (
        refused("no_pool"),
        refused("too_large"),
        refused("unknown_drop_category"),
    )
    ghost = f"{pool_name}-ghost"
    stream.send(cluster(ghost, issued=5, ok=5))
    # More than a stream could have made in its life so far.
    stream.send(cluster(pool_name, issued=MAX_CALLS_PER_SECOND * 100, ok=1))
    stream.send(cluster(pool_name, issued=1, ok=1, localities=65))
    # An unknown category is removed; the rest counts, and drops beyond the
    # categories count as uncategorized.
    stream.send(
        cluster(pool_name, issued=4, ok=4, drops=(("lb", 2), ("forged", 50)), total_dropped=55)
    )
    wait_until(lambda: total(redis_client, pool_name).get("finished") == 4 + 2 + 3)
    got = total(redis_client, pool_name)
    assert got["drop:lb"] == 2
    assert got[f"drop:{UNCATEGORIZED}"] == 3
    assert "drop:forged" not in got
    assert got["reports"] == 1
    assert refused("no_pool") == no_pool + 1
    assert refused("too_large") == too_large + 2
    assert refused("unknown_drop_category") == unknown + 1
    assert redis_client.keys(f"lookaside:{{{ghost}}}:*") == []


def test_reports_faster_than_the_interval_are_refused(
    balancer: BalancerHandle, redis_client: Any, pool_name: str, lrs_streams: list[LrsStream]
) -> None:
    put_pool(balancer, pool_name)
    stream = LrsStream(balancer.address)
    lrs_streams.append(stream)
    stream.next()
    before = refused("too_fast")
    for _ in range(20):
        stream.send(cluster(pool_name, issued=1, ok=1))
    wait_until(
        lambda: (
            refused("too_fast") + total(redis_client, pool_name).get("reports", 0) >= before + 20
        )
    )
    reports = total(redis_client, pool_name)["reports"]
    # The burst (5) and a refill every half interval while the 20 arrive
    # (a few on a loaded machine).
    assert 5 <= reports <= 12, reports
    assert refused("too_fast") == before + 20 - reports


def test_the_interval_follows_the_pools_reported_on(
    balancer: BalancerHandle, pool_name: str, lrs_streams: list[LrsStream]
) -> None:
    slow = f"{pool_name}-slow"
    balancer.run(balancer.store.put_pool(PoolConfig(name=slow, report_interval_ms=7000)))
    put_pool(balancer, pool_name)
    stream = LrsStream(balancer.address)
    lrs_streams.append(stream)
    assert stream.next().load_reporting_interval.ToMilliseconds() == 1000  # of all pools
    stream.send(cluster(slow, issued=1, ok=1))
    assert stream.next().load_reporting_interval.ToMilliseconds() == 7000


def test_malformed_first_request_gets_invalid_argument(balancer: BalancerHandle) -> None:
    channel = grpc.insecure_channel(balancer.address)
    try:
        call = channel.stream_stream(
            "/envoy.service.load_stats.v3.LoadReportingService/StreamLoadStats"
        )(iter([b"\xff\xff\xff"]), timeout=10)
        with pytest.raises(grpc.RpcError) as info:
            list(call)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed LoadStatsRequest" in (info.value.details() or "")
    finally:
        channel.close()


@pytest.fixture
def guarded(redis_url: str, tmp_path: Path, pool_name: str) -> Iterator[BalancerHandle]:
    """A balancer whose pool requires client credentials (client tokens)."""
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "pools": {
                    pool_name: {
                        "tokens": ["registration-token-0123456789ab"],
                        "client_tokens": [CLIENT_TOKEN],
                        "require_client_credentials": True,
                    }
                }
            }
        )
    )
    handle = BalancerHandle(redis_url, insecure_registration=False, registration_policy=str(policy))
    put_pool(handle, pool_name)
    yield handle
    handle.stop()


def test_a_token_not_of_the_pool_ends_the_stream_and_counts_nothing(
    guarded: BalancerHandle, redis_client: Any, pool_name: str, lrs_streams: list[LrsStream]
) -> None:
    bad = LrsStream(guarded.address, metadata=(("authorization", "Bearer not-the-client-token"),))
    lrs_streams.append(bad)
    bad.next()
    bad.send(cluster(pool_name, issued=3, ok=3))
    with pytest.raises(grpc.RpcError) as info:
        bad.next()
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert pool_name in (info.value.details() or "")
    # With the pool's token, and without one (display only, as for grpclb),
    # reports count.
    good = LrsStream(guarded.address, metadata=(("authorization", f"Bearer {CLIENT_TOKEN}"),))
    anonymous = LrsStream(guarded.address)
    lrs_streams += [good, anonymous]
    good.next()
    anonymous.next()
    good.send(cluster(pool_name, issued=4, ok=4))
    anonymous.send(cluster(pool_name, issued=1, ok=1))
    wait_until(lambda: total(redis_client, pool_name).get("xds:finished") == 5)
    time.sleep(0.5)  # a flush later, the refused report has still not counted
    assert total(redis_client, pool_name)["xds:reports"] == 2


def test_lrs_streams_per_address_are_limited(redis_url: str, lrs_streams: list[LrsStream]) -> None:
    handle = BalancerHandle(redis_url, max_streams_per_address=1)
    try:
        first = LrsStream(handle.address)
        lrs_streams.append(first)
        first.next()
        second = LrsStream(handle.address)
        lrs_streams.append(second)
        with pytest.raises(grpc.RpcError) as info:
            second.next()
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many LRS streams from 127.0.0.1" in (info.value.details() or "")
    finally:
        handle.stop()
