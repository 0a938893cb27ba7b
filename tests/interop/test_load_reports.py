"""ClientStats and drops from a stock grpcio client end up in Redis."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import grpc
import redis

from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from lookaside_registry import keys
from lookaside_registry.model import DropRate, PoolConfig
from tests.dns_responder.dns_handle import DnsHandle
from tests.interop.helpers import Backend, get_feature, register
from tests.support import BalancerHandle, wait_until


def load_total(redis_client: redis.Redis, pool: str) -> dict[str, int]:
    return {k: int(v) for k, v in redis_client.hgetall(keys.load_total(pool)).items()}


def test_client_stats_arrive_in_redis_with_the_right_counts(
    balancer: BalancerHandle,
    dns: DnsHandle,
    pool_name: str,
    backends: Callable[..., list[Backend]],
    fallback_backend: Backend,
    stock_channel: Callable[..., grpc.Channel],
    redis_client: redis.Redis,
) -> None:
    balancer.run(balancer.store.put_pool(PoolConfig(name=pool_name, report_interval_ms=1000)))
    two = backends(2)
    for b in two:
        register(balancer, pool_name, b)
    stub = rg_grpc.RouteGuideStub(stock_channel(dns, pool_name, fallback_backend.port))
    results = Counter(get_feature(stub)[0] for _ in range(150))
    assert results == {grpc.StatusCode.OK: 150}
    assert sum(b.calls for b in two) == 150
    wait_until(lambda: load_total(redis_client, pool_name).get("started", 0) >= 150, timeout=10)
    total = load_total(redis_client, pool_name)
    assert total["started"] == 150
    assert total["finished"] == 150
    assert total["known_received"] == 150
    assert total.get("failed_to_send", 0) == 0
    assert not any(k.startswith("drop:") for k in total)


def test_a_configured_drop_fails_its_share_and_is_counted_per_token(
    balancer: BalancerHandle,
    dns: DnsHandle,
    pool_name: str,
    backends: Callable[..., list[Backend]],
    fallback_backend: Backend,
    stock_channel: Callable[..., grpc.Channel],
    redis_client: redis.Redis,
) -> None:
    config = PoolConfig(
        name=pool_name, report_interval_ms=1000, drops=(DropRate("rate_limit", 100),)
    )
    balancer.run(balancer.store.put_pool(config))
    three = backends(3)
    for b in three:
        register(balancer, pool_name, b)
    stub = rg_grpc.RouteGuideStub(stock_channel(dns, pool_name, fallback_backend.port))
    codes: Counter[grpc.StatusCode] = Counter()
    failures: Counter[str] = Counter()

    def call() -> None:
        code, text = get_feature(stub)
        codes[code] += 1
        if code != grpc.StatusCode.OK:
            failures[f"{code.name}: {text}"] += 1

    def warmed_up() -> bool:
        call()
        return all(b.calls for b in three)

    # Warm up until every backend is connected (the picker is then stable).
    wait_until(warmed_up, timeout=10, interval=0.01)
    warm = codes.copy()
    for _ in range(300):
        call()
    # The list has 10 entries, one of them the drop: exactly 1 call in 10 fails.
    measured = codes - warm
    assert measured == {grpc.StatusCode.OK: 270, grpc.StatusCode.UNAVAILABLE: 30}
    assert list(failures) == ["UNAVAILABLE: drop directed by grpclb balancer"]

    # Every call of the client, warm-up included, is in the load report.
    total_calls = sum(codes.values())
    wait_until(
        lambda: load_total(redis_client, pool_name).get("started", 0) >= total_calls, timeout=10
    )
    total = load_total(redis_client, pool_name)
    assert total["started"] == total_calls
    assert total["finished"] == total_calls
    assert total["drop:rate_limit"] == codes[grpc.StatusCode.UNAVAILABLE]
    assert total["known_received"] == codes[grpc.StatusCode.OK]
