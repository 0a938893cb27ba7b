"""Load reports that would poison the registry are not counted: huge or
negative counts, unknown drop tokens, forged per-backend outcomes, names of
no pool, reports faster than the interval, garbage. Real balancer and Redis;
the keys are read afterwards."""

from __future__ import annotations

import logging

import grpc
import pytest

from balancer_server import metrics
from balancer_server.limits import REPORT_BURST, RateLimitedLog
from balancer_server.report_ingest import MAX_CALLS_PER_SECOND, StreamReports
from lookaside_proto.lb.v1 import backend_stats_pb2 as bs
from lookaside_proto.lb.v1 import load_balancer_pb2 as lb
from lookaside_registry import keys
from lookaside_registry.model import DropRate, PoolConfig
from tests.support import BalancerHandle, LbStream, wait_until

INT64_MAX = 2**63 - 1


def stats(started: int = 0, finished: int = 0, drops=(), outcomes=()) -> lb.LoadBalanceRequest:  # type: ignore[no-untyped-def]
    report = lb.ClientStats(num_calls_started=started, num_calls_finished=finished)
    for token, n in drops:
        report.calls_finished_with_drop.add(load_balance_token=token, num_calls=n)
    if outcomes:
        ext = bs.ClientStatsExtension(calls_per_backend=list(outcomes))
        report = lb.ClientStats.FromString(report.SerializeToString() + ext.SerializeToString())
    return lb.LoadBalanceRequest(client_stats=report)


def refused(reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "lookaside_balancer_load_reports_refused_total", {"reason": reason}
    )
    return value or 0.0


def total(redis_client, pool: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {k: int(v) for k, v in redis_client.hgetall(keys.load_total(pool)).items()}


def open_pool(
    balancer: BalancerHandle, pool: str, port: int = 7100, **config
) -> tuple[LbStream, str]:  # type: ignore[no-untyped-def]
    balancer.run(balancer.store.put_pool(PoolConfig(name=pool, report_interval_ms=1000, **config)))
    lease = balancer.run(
        balancer.store.register(pool=pool, host="127.0.0.1", ip="127.0.0.1", port=port)
    )
    stream = LbStream(balancer.address, pool)
    entries = stream.next_list()
    token = next(t for a, t, d in entries if not d)
    assert token.startswith(lease.backend_id)
    return stream, token


def test_int64_max_then_more_reports_corrupt_nothing(
    balancer: BalancerHandle, redis_client, pool_name: str
) -> None:  # type: ignore[no-untyped-def]
    other = f"{pool_name}-b"
    stream, _ = open_pool(balancer, pool_name)
    witness, _ = open_pool(balancer, other)
    before = refused("too_large")
    stream.send(stats(started=INT64_MAX, finished=INT64_MAX))
    stream.send(stats(started=7, finished=7))
    witness.send(stats(started=3, finished=3))
    wait_until(lambda: total(redis_client, pool_name).get("finished") == 7)
    wait_until(lambda: total(redis_client, other).get("finished") == 3)
    assert refused("too_large") == before + 1
    stream.send(stats(started=5, finished=5))
    wait_until(lambda: total(redis_client, pool_name).get("finished") == 12)
    # Several flushes later the counts are still exactly what was sent.
    flushes = metrics.REGISTRY.get_sample_value(
        "lookaside_balancer_load_reports_total", {"pool": pool_name}
    )
    wait_until(
        lambda: (
            metrics.REGISTRY.get_sample_value(
                "lookaside_balancer_load_reports_total", {"pool": other}
            )
            is not None
        )
    )
    assert total(redis_client, pool_name) == {"started": 12, "finished": 12, "reports": 2}
    assert total(redis_client, other) == {"started": 3, "finished": 3, "reports": 1}
    assert flushes == 2
    stream.close()
    witness.close()


def test_negative_counts_are_not_stored(
    balancer: BalancerHandle, redis_client, pool_name: str
) -> None:  # type: ignore[no-untyped-def]
    stream, _ = open_pool(balancer, pool_name)
    before = refused("negative")
    stream.send(stats(started=-50, finished=-50))
    stream.send(stats(started=1, finished=1, drops=[("x", -3)]))
    stream.send(stats(started=2, finished=2))
    wait_until(lambda: total(redis_client, pool_name).get("finished") == 2)
    assert refused("negative") == before + 2
    assert all(v >= 0 for v in total(redis_client, pool_name).values())
    stream.close()


def test_only_drop_tokens_the_pool_configured_count(
    balancer: BalancerHandle, redis_client, pool_name: str
) -> None:  # type: ignore[no-untyped-def]
    stream, _ = open_pool(balancer, pool_name, drops=(DropRate("throttle", 100),))
    junk = [(f"junk{i}", 1) for i in range(60)]
    stream.send(stats(started=10, finished=10, drops=[("throttle", 4), *junk]))
    stream.send(stats(started=1, finished=1, drops=[(f"more{i}", 1) for i in range(5000)]))
    wait_until(lambda: total(redis_client, pool_name).get("finished") == 10)
    fields = set(total(redis_client, pool_name))
    assert fields == {"started", "finished", "reports", "drop:throttle"}
    assert total(redis_client, pool_name)["drop:throttle"] == 4
    stream.close()


def test_forged_outcomes_for_tokens_not_handed_out_are_dropped(
    balancer: BalancerHandle, redis_client, pool_name: str
) -> None:  # type: ignore[no-untyped-def]
    victim_pool = f"{pool_name}-victim"
    stream, token = open_pool(balancer, pool_name)
    victim, victim_token = open_pool(balancer, victim_pool, port=7101)
    assert victim_token != token
    backend_id = token.partition(".")[0]
    forged = [
        bs.BackendCallStats(load_balance_token=victim_token, num_calls_finished=500),
        bs.BackendCallStats(load_balance_token=f"{'ab' * 6}.x", num_calls_finished=500),
        bs.BackendCallStats(load_balance_token=token, num_calls_finished=INT64_MAX),
    ]
    before = refused("unknown_backend_token")
    stream.send(stats(started=1, finished=1, outcomes=forged))
    stream.send(
        stats(started=2, finished=2, outcomes=[bs.BackendCallStats(load_balance_token=token,
                                                                   num_calls_finished=2)])
    )  # fmt: skip
    wait_until(lambda: total(redis_client, pool_name).get("finished") == 3)
    assert refused("unknown_backend_token") == before + 2
    outcomes = redis_client.hgetall(keys.outcomes(pool_name))
    assert {k: int(v) for k, v in outcomes.items() if k.endswith(":f")} == {f"{backend_id}:f": 2}
    assert not redis_client.exists(keys.outcomes(victim_pool))
    stream.close()
    victim.close()


def test_names_of_no_pool_create_no_keys_and_no_series(
    balancer: BalancerHandle, redis_client, pool_name: str
) -> None:  # type: ignore[no-untyped-def]
    names = [f"{pool_name}-ghost{i}" for i in range(20)]
    streams = [LbStream(balancer.address, n) for n in names]
    for s in streams:
        s.next()  # the initial response
        s.send(stats(started=1, finished=1))
    before = refused("no_pool")
    wait_until(lambda: refused("no_pool") >= before + 1 or refused("no_pool") >= 20)
    for s in streams:
        s.close()
    wait_until(lambda: not any(n in balancer.server.hub.feeds for n in names))
    assert redis_client.keys(f"*{pool_name}-ghost*") == []
    exposed = metrics.REGISTRY.collect()
    labels = {tuple(s.labels.values()) for m in exposed for s in m.samples}
    assert not any(n in str(v) for v in labels for n in names)


def test_a_stream_that_waited_for_its_pool_counts_once_the_pool_appears(
    balancer: BalancerHandle, redis_client, pool_name: str
) -> None:  # type: ignore[no-untyped-def]
    import json

    stream = LbStream(balancer.address, f"{pool_name}.example.test:50051")
    stream.next()  # the initial response: the pool does not exist yet
    balancer.run(balancer.store.put_pool(PoolConfig(name=pool_name)))
    balancer.run(
        balancer.store.register(pool=pool_name, host="127.0.0.1", ip="127.0.0.1", port=7190)
    )
    assert stream.next_list()  # the waiting stream gets its list

    def counted() -> int:
        raw = redis_client.hvals(keys.streams(pool_name))
        return sum(int(json.loads(v)["streams"]) for v in raw)

    # It is the pool's one stream, and counted as such.
    wait_until(lambda: counted() == 1)
    stream.close()


def test_reports_faster_than_the_interval_are_dropped_and_counted(
    balancer: BalancerHandle, redis_client, pool_name: str
) -> None:  # type: ignore[no-untyped-def]
    stream, _ = open_pool(balancer, pool_name)
    before = refused("too_fast")
    for _ in range(REPORT_BURST + 20):
        stream.send(stats(started=1, finished=1))
    wait_until(lambda: refused("too_fast") >= before + 15)
    wait_until(lambda: total(redis_client, pool_name).get("finished", 0) >= REPORT_BURST)
    assert total(redis_client, pool_name)["finished"] <= REPORT_BURST + 1
    stream.close()


def test_garbage_after_a_valid_first_message_is_logged_rarely(
    balancer: BalancerHandle, pool_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    balancer.run(balancer.store.put_pool(PoolConfig(name=pool_name)))
    caplog.set_level(logging.WARNING, logger="lookaside.balancer")
    with grpc.insecure_channel(balancer.address) as channel:
        call = channel.stream_stream("/grpc.lb.v1.LoadBalancer/BalanceLoad")
        first = lb.LoadBalanceRequest(initial_request=lb.InitialLoadBalanceRequest(name=pool_name))
        frames = [first.SerializeToString()] + [b"\xff\xff\xff\xff"] * 200
        before = refused("malformed")
        responses = call(iter(frames), timeout=10)
        got = list(responses)
        # The stream survived the garbage and ended with OK on half-close.
        assert responses.code() is grpc.StatusCode.OK
        assert got[0].startswith(b"\x0a")  # the initial response
    wait_until(lambda: refused("malformed") >= before + 200)
    lines = [r for r in caplog.records if "malformed LoadBalanceRequest" in r.getMessage()]
    assert 1 <= len(lines) <= 2


def test_stream_report_checks_unit() -> None:
    now = [100.0]
    checks = StreamReports(clock=lambda: now[0])
    payload = lb.LoadBalanceResponse(
        server_list=lb.ServerList(servers=[lb.Server(load_balance_token="d", drop=True)])
    ).SerializeToString()
    checks.sent(payload)
    now[0] += 1.0
    ok = checks.check(stats(started=MAX_CALLS_PER_SECOND, drops=[("d", 1)]).client_stats, 1000)
    assert ok is not None and ok.calls_finished_with_drop[0].num_calls == 1
    now[0] += 1.0
    assert checks.check(stats(started=MAX_CALLS_PER_SECOND * 2).client_stats, 1000) is None


def test_rate_limited_log_counts_what_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    logger = logging.getLogger("lookaside.test.ratelimit")
    limited = RateLimitedLog(logger, interval=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger=logger.name):
        assert limited.warning("k", "bad thing %s", 1)
        assert not any(limited.warning("k", "bad thing %s", i) for i in range(50))
        now[0] = 11
        assert limited.warning("k", "bad thing %s", 2)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["bad thing 1", "bad thing 2 (50 more like it not logged)"]


def test_claims_on_a_backend_are_cut_to_the_streams_share() -> None:
    """A backend with one of four list entries: a report of 100 finished
    calls claims at most 100 x 1/4 x SHARE_SLACK + SHARE_FLOOR on it, over
    all its entries for that token, each count cut in proportion."""
    from balancer_server.report_ingest import SHARE_FLOOR, SHARE_SLACK

    now = [100.0]
    checks = StreamReports(clock=lambda: now[0])
    servers = [lb.Server(ip_address=bytes([10, 0, 0, i]), port=80, load_balance_token=f"t{i}")
               for i in range(4)]  # fmt: skip
    checks.sent(
        lb.LoadBalanceResponse(server_list=lb.ServerList(servers=servers)).SerializeToString()
    )
    now[0] += 1.0
    most = int(100 * 0.25 * SHARE_SLACK) + SHARE_FLOOR
    before = refused("over_share")
    report = stats(
        started=100,
        finished=100,
        outcomes=[
            bs.BackendCallStats(load_balance_token="t0", num_calls_finished=25,
                                num_calls_finished_known_received=25),
            bs.BackendCallStats(load_balance_token="t1", num_calls_finished=1000,
                                num_calls_finished_with_deadline_exceeded=1000),
            bs.BackendCallStats(load_balance_token="t1", num_calls_finished=50),
        ],
    )  # fmt: skip
    ok = checks.check(report.client_stats, 1000)
    assert ok is not None
    ext = bs.ClientStatsExtension.FromString(ok.SerializeToString())
    rows = [(e.load_balance_token, e.num_calls_finished, e.num_calls_finished_with_deadline_exceeded)
            for e in ext.calls_per_backend]  # fmt: skip
    assert rows == [("t0", 25, 0), ("t1", most, most)]
    assert refused("over_share") == before + 2
