"""The client's private copy of grpc.lb.v1 matches the generated code and
lives beside the default pool's copy in one process."""

from __future__ import annotations

from client_lib import _lb_proto
from lookaside_proto.lb.v1 import backend_stats_pb2, load_balancer_pb2


def test_private_descriptors_match_the_generated_code() -> None:
    # Fails when protos/ changed and client_lib/_lb_proto.py was not rewritten.
    assert _lb_proto.LOAD_BALANCER_FILE == load_balancer_pb2.DESCRIPTOR.serialized_pb
    assert _lb_proto.BACKEND_STATS_FILE == backend_stats_pb2.DESCRIPTOR.serialized_pb


def test_both_copies_in_one_process_speak_the_same_bytes() -> None:
    # This process holds both: the balancer's generated module (default pool)
    # and the client's private pool.
    mine = _lb_proto.lb.LoadBalanceRequest
    theirs = load_balancer_pb2.LoadBalanceRequest
    assert mine is not theirs
    assert (
        mine.DESCRIPTOR.full_name == theirs.DESCRIPTOR.full_name == "grpc.lb.v1.LoadBalanceRequest"
    )
    request = mine(initial_request=_lb_proto.lb.InitialLoadBalanceRequest(name="svc:443"))
    assert theirs.FromString(request.SerializeToString()).initial_request.name == "svc:443"


def test_calls_that_time_out_are_reported_per_backend() -> None:
    import grpc

    from client_lib.picker import CallCounters

    counters = CallCounters()
    for code, metadata in (
        (grpc.StatusCode.DEADLINE_EXCEEDED, False),
        (4, True),  # grpc.aio's raw code, after headers: still a timeout
        (grpc.StatusCode.OK, True),
    ):
        counters.call_started()
        counters.finish_with(code, metadata, "b1.e")
    stats = counters.take_report(0)
    assert stats is not None
    ext = backend_stats_pb2.ClientStatsExtension.FromString(stats.SerializeToString())
    (entry,) = ext.calls_per_backend
    assert entry.num_calls_finished == 3
    assert entry.num_calls_finished_known_received == 2
    assert entry.num_calls_finished_with_deadline_exceeded == 2
