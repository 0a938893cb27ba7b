"""A fuzz of the BalanceLoad stream: random and mutated messages and raw
garbage frames over a generic call with identity serializers. Every stream
ends with a status, the balancer keeps serving a well-behaved stream, and
Redis holds nothing out of bounds afterwards."""

from __future__ import annotations

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balancer_server.report_ingest import MAX_CALLS_PER_SECOND
from lookaside_proto.lb.v1 import load_balancer_pb2 as lb
from lookaside_registry import keys
from lookaside_registry.model import DropRate, PoolConfig
from tests.support import BalancerHandle, LbStream, wait_until

METHOD = "/grpc.lb.v1.LoadBalancer/BalanceLoad"
INT64 = st.integers(-(2**63), 2**63 - 1)
ENDINGS = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.DEADLINE_EXCEEDED,  # a stream that is never refused nor closed
}


NAMES_SENT: set[str] = set()


def initial(name: str) -> bytes:
    NAMES_SENT.add(name)
    return lb.LoadBalanceRequest(
        initial_request=lb.InitialLoadBalanceRequest(name=name)
    ).SerializeToString()


def report(started: int, finished: int, drops: list[tuple[str, int]]) -> bytes:
    stats = lb.ClientStats(num_calls_started=started, num_calls_finished=finished)
    for token, n in drops:
        stats.calls_finished_with_drop.add(load_balance_token=token, num_calls=n)
    return lb.LoadBalanceRequest(client_stats=stats).SerializeToString()


def mutate(data: bytes, at: int, value: int) -> bytes:
    if not data:
        return bytes([value])
    i = at % len(data)
    return data[:i] + bytes([value]) + data[i + 1 :]


def frames(pool: str) -> st.SearchStrategy[list[bytes]]:
    names = st.one_of(st.just(pool), st.text(max_size=300), st.just(pool + "\n"))
    reports = st.builds(
        report, INT64, INT64, st.lists(st.tuples(st.text(max_size=60), INT64), max_size=8)
    )
    first = st.one_of(st.builds(initial, names), st.binary(max_size=64), reports)
    later = st.one_of(
        reports,
        st.binary(max_size=200),
        st.builds(mutate, reports, st.integers(0, 200), st.integers(0, 255)),
        st.builds(initial, names),
    )
    return st.tuples(first, st.lists(later, max_size=12)).map(lambda t: [t[0], *t[1]])


def test_fuzzed_streams_end_with_a_status_and_poison_nothing(
    balancer: BalancerHandle, redis_client, pool_name: str
) -> None:  # type: ignore[no-untyped-def]
    balancer.run(
        balancer.store.put_pool(
            PoolConfig(name=pool_name, report_interval_ms=1000, drops=(DropRate("lb", 100),))
        )
    )
    balancer.run(
        balancer.store.register(pool=pool_name, host="127.0.0.1", ip="127.0.0.1", port=7300)
    )
    channel = grpc.insecure_channel(balancer.address)
    call = channel.stream_stream(METHOD)  # identity serializers: bytes in, bytes out
    reports_sent = [0]

    @settings(
        max_examples=60, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )  # fmt: skip
    @given(frames(pool_name))
    def one_stream(messages: list[bytes]) -> None:
        reports_sent[0] += len(messages)
        responses = call(iter(messages), timeout=3)
        try:
            for _ in responses:
                pass
        except grpc.RpcError:
            pass
        assert responses.code() in ENDINGS, (responses.code(), responses.details())

    try:
        one_stream()
        # The balancer still serves a well-behaved client.
        good = LbStream(balancer.address, pool_name)
        assert good.next().HasField("initial_response")
        assert any(a == "127.0.0.1:7300" for a, _, _ in good.next_list())
        good.close()
    finally:
        channel.close()
    wait_until(lambda: not balancer.server.sink._pending)
    bound = MAX_CALLS_PER_SECOND * 3600 * reports_sent[0]
    # Names of no pool left nothing behind.
    for name in NAMES_SENT - {pool_name}:
        assert not redis_client.exists(keys.streams(name), keys.load_total(name)), name
    for key in redis_client.scan_iter(f"lookaside:{{{pool_name}}}:load:*"):
        fields = redis_client.hgetall(key)
        assert set(fields) <= {"started", "finished", "failed_to_send", "known_received",
                               "reports", "drop:lb"}  # fmt: skip
        assert all(0 <= int(x) <= bound for x in fields.values())
    assert set(balancer.server.hub.feeds) <= {pool_name} | {
        p for p in balancer.server.hub.feeds if balancer.server.hub.feeds[p].exists
    }
