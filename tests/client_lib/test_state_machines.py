"""The I/O-free cores on their own: events in, actions out, no sockets and
no clock (time is passed in)."""

from __future__ import annotations

import grpc
import pytest

from client_lib._lb_proto import lb
from client_lib.backoff import Backoff
from client_lib.lease import LeaseKeeper, RegistrationRefused, lease_spec
from client_lib.session import BalancerSession, EnterFallback, NewList, StartReports
from lookaside.proto.registry.v1 import registry_pb2 as pb


def no_jitter() -> Backoff:
    return Backoff(jitter=0.0)


def initial(seconds: int = 0) -> lb.LoadBalanceResponse:
    r = lb.LoadBalanceResponse()
    r.initial_response.client_stats_report_interval.FromSeconds(seconds)
    return r


def server_list(*ports: int) -> lb.LoadBalanceResponse:
    r = lb.LoadBalanceResponse()
    for p in ports:
        r.server_list.servers.add(
            ip_address=b"\x0a\x00\x00\x01", port=p, load_balance_token=f"t{p}"
        )
    return r


def test_refused_balancers_are_tried_in_turn_then_backoff_grows() -> None:
    s = BalancerSession("svc", ["a:1", "b:1", "c:1"], backoff=no_jitter())
    step = s.start(0.0)
    assert (step.address, step.delay) == ("a:1", 0.0)
    delays = []
    for t in range(9):
        s.stream_opened(step.address)
        step, _ = s.stream_ended(float(t), "UNAVAILABLE: refused")
        delays.append((step.address, round(step.delay, 3)))
    assert delays == [
        ("b:1", 0.0), ("c:1", 0.0), ("a:1", 1.0),
        ("b:1", 0.0), ("c:1", 0.0), ("a:1", 1.6),
        ("b:1", 0.0), ("c:1", 0.0), ("a:1", 2.56),
    ]  # fmt: skip


def test_every_balancer_failing_before_a_list_enters_fallback_once() -> None:
    s = BalancerSession("svc", ["a:1", "b:1"], backoff=no_jitter())
    s.start(0.0)
    s.stream_opened("a:1")
    assert s.stream_ended(0.0, "refused")[1] == []
    s.stream_opened("b:1")
    _, actions = s.stream_ended(0.0, "refused")
    assert actions == [EnterFallback("every balancer failed (refused)")]
    s.stream_opened("a:1")
    s.stream_opened("b:1")
    assert s.stream_ended(5.0, "refused")[1] == []  # already in fallback


def test_lists_reports_identical_lists_and_fallback() -> None:
    s = BalancerSession("svc", "a:1")
    s.start(0.0)
    s.stream_opened("a:1")
    assert s.response(initial(2), "a:1") == []
    first = s.response(server_list(80, 81), "a:1")
    assert first[0] == StartReports(2.0)
    assert isinstance(first[1], NewList) and len(first[1].entries) == 2
    assert s.response(server_list(80, 81), "a:1") == []  # identical: ignored
    assert s.response(lb.LoadBalanceResponse(fallback_response=lb.FallbackResponse()), "a:1") == [
        EnterFallback("the balancer sent fallback_response")
    ]
    # The same list again leaves fallback (C-core would stay: trap 2).
    again = s.response(server_list(80, 81), "a:1")
    assert [type(a) for a in again] == [NewList] and not s.in_fallback


def test_fallback_timer_only_before_the_first_list() -> None:
    s = BalancerSession("svc", "a:1", fallback_timeout=10)
    s.start(100.0)
    assert s.fallback_timer(105.0) == []
    assert s.fallback_timer(110.0) == [EnterFallback("no server list within 10s")]
    t = BalancerSession("svc", "a:1", fallback_timeout=10)
    t.start(100.0)
    t.stream_opened("a:1")
    t.response(server_list(80), "a:1")
    assert t.fallback_timer(110.0) == []


def test_a_stream_that_ends_after_its_list_reconnects_at_once_but_not_in_a_hot_loop() -> None:
    s = BalancerSession("svc", "a:1", backoff=no_jitter())
    s.start(0.0)
    s.stream_opened("a:1")
    s.response(server_list(80), "a:1")
    step, _ = s.stream_ended(10.0)
    assert step.delay == 0.0
    s.stream_opened("a:1")
    s.response(server_list(80), "a:1")
    step, _ = s.stream_ended(10.2)  # again within a second: a failure, backoff
    assert step.delay == 1.0


@pytest.mark.parametrize("target", ["", "x" * 256])
def test_bad_targets_are_refused(target: str) -> None:
    with pytest.raises(ValueError, match="target"):
        BalancerSession(target, "a:1")


def registered(interval_ms: int = 500) -> pb.RegisterResponse:
    r = pb.RegisterResponse(backend_id="b", lease_id="l", address="10.0.0.1:80")
    r.heartbeat_interval.FromMilliseconds(interval_ms)
    return r


def test_lease_keeper_registers_round_robin_with_backoff_then_heartbeats() -> None:
    k = LeaseKeeper(lease_spec(["a:1", "b:1"], "pool", 80), backoff=no_jitter())
    steps = []
    for _ in range(4):
        step = k.next_step()
        steps.append((step.method, step.address, round(step.delay, 2)))
        k.failed(grpc.StatusCode.UNAVAILABLE, "refused")
    assert steps == [
        ("Register", "a:1", 0.0),
        ("Register", "b:1", 0.0),
        ("Register", "a:1", 1.0),
        ("Register", "b:1", 0.0),
    ]
    k.succeeded(registered())
    step = k.next_step()
    assert (step.method, step.delay) == ("Heartbeat", 0.5)
    assert step.request().lease_id == "l"
    k.failed(grpc.StatusCode.UNAVAILABLE, "gone")  # next balancer, sooner
    assert (k.next_step().method, k.next_step().delay) == ("Heartbeat", 0.25)
    k.failed(grpc.StatusCode.NOT_FOUND, "lease expired")  # lost: register again
    assert k.next_step().method == "Register"


def test_lease_keeper_raises_refusals_retrying_cannot_fix() -> None:
    k = LeaseKeeper(lease_spec("a:1", "pool", 80, token="t"))
    assert k.spec.call_metadata() == (("authorization", "Bearer t"),)
    with pytest.raises(RegistrationRefused) as info:
        k.failed(grpc.StatusCode.UNAUTHENTICATED, "bad token")
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "bad token" in str(info.value)


def test_lease_keeper_registers_again_after_a_refused_lease_and_never_raises_later() -> None:
    k = LeaseKeeper(lease_spec("a:1", "pool", 80), backoff=no_jitter())
    k.succeeded(registered())
    k.failed(grpc.StatusCode.FAILED_PRECONDITION, "lease id does not match")
    assert k.next_step().method == "Register"
    # In the background a refusal is retried with backoff, not raised.
    k.failed(grpc.StatusCode.PERMISSION_DENIED, "token not allowed")
    step = k.next_step()
    assert (step.method, step.delay) == ("Register", 1.0)
