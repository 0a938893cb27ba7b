"""The I/O-free cores on their own: events in, actions out, no sockets and
no clock (time is passed in)."""

from __future__ import annotations

import grpc
import pytest

from client_lib._lb_proto import lb
from client_lib.attempts import WAIT_FOR_PICK, HedgedAttempts, Sleep, Start, UnaryAttempts
from client_lib.backoff import Backoff
from client_lib.core import CONNECTING, READY, SHUTDOWN, TRANSIENT_FAILURE, ChannelCore, Phase
from client_lib.hedging import HedgingPolicy
from client_lib.lease import LeaseKeeper, RegistrationRefused, lease_spec
from client_lib.retry import Attempts, RetryPolicy
from client_lib.server_list import SubChannel
from client_lib.session import BalancerSession, EnterFallback, Fallback, NewList, StartReports
from lookaside_proto.registry.v1 import registry_pb2 as pb

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


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


# -- the channel's core: one owner, effects out ---------------------------------------


def serving_core(*ports: int, fallback: tuple[str, ...] = ()) -> ChannelCore:
    """A core over no sockets, with the list of `ports` in and every
    backend READY (its sub-channels carry no channel)."""
    core = ChannelCore(
        BalancerSession("svc", "lb:1"), lambda a: SubChannel(a, None), fallback_targets=fallback
    )
    core.stream_opened("lb:1")
    effects = core.response(server_list(*ports), "lb:1")
    assert [s.address for s in effects.watch] == [f"10.0.0.1:{p}" for p in ports]
    for sub in effects.watch:
        core.set_state(sub, READY)
    return core


def test_losing_balancer_and_backends_enters_fallback_as_effects_not_callbacks() -> None:
    core = serving_core(80, 81, fallback=("10.9.9.9:1",))
    core.stream_ended(1.0, "UNAVAILABLE: balancer gone")  # a backend still READY: no fallback
    assert not core.in_fallback and core.session.fallback is Fallback.OFF
    subs = list(core.subchannels.values())
    assert core.set_state(subs[0], TRANSIENT_FAILURE).watch == []
    effects = core.set_state(subs[1], TRANSIENT_FAILURE)
    # The core's one lock is free again, and what the driver must do is
    # handed back: watch the fallback backend, retire the listed ones.
    assert core.lock.acquire(blocking=False)
    core.lock.release()
    assert [s.address for s in effects.watch] == ["10.9.9.9:1"]
    assert sorted(s.address for s in effects.retire) == ["10.0.0.1:80", "10.0.0.1:81"]
    assert effects.changed and core.in_fallback and core.session.fallback is Fallback.ACTIVE
    # A new list from a balancer leaves fallback: one record, the session's.
    core.stream_opened("lb:1")
    back = core.response(server_list(80), "lb:1")
    assert [s.address for s in back.retire] == ["10.9.9.9:1"]
    assert not core.in_fallback and core.session.fallback is Fallback.OFF


def test_fallback_with_no_targets_fails_fast_from_one_record() -> None:
    core = ChannelCore(BalancerSession("svc", "lb:1"), lambda a: SubChannel(a, None))
    assert core.phase is Phase.WAITING and core.connectivity() is CONNECTING
    assert core.verdict(wait_for_ready=False) is None  # waits for the first list
    core.start(0.0)
    effects, silent = core.fallback_timer(10.0)
    assert silent and effects.changed and not effects.watch
    assert core.session.fallback is Fallback.ACTIVE  # the balancer is given up on...
    assert not core.in_fallback  # ...but there is nothing to fall back to
    assert core.phase is Phase.NO_LIST and core.connectivity() is TRANSIENT_FAILURE
    failed = core.verdict(wait_for_ready=False)
    assert failed is not None and "no server list within 10s" in failed.details()
    core.stream_opened("lb:1")
    core.response(server_list(80), "lb:1")
    assert core.phase is Phase.SERVING and core.session.fallback is Fallback.OFF
    core.close()
    assert core.phase is Phase.CLOSED and core.connectivity() is SHUTDOWN


# -- a unary call's attempts ------------------------------------------------------------

CONNECT_FAILED = "failed to connect to all addresses"


def test_an_attempt_that_never_left_goes_once_more_on_another_backend() -> None:
    core = serving_core(80, 81)
    run = UnaryAttempts(core, 1, None, deadline=None)
    p = core.pick()
    assert p is not None
    core.counters.call_started()
    step = run.failed(p, UNAVAILABLE, CONNECT_FAILED, False, None, 0.0)
    assert isinstance(step, Start) and step.pick.target.address != p.target.address
    core.counters.call_started()
    assert run.failed(step.pick, UNAVAILABLE, CONNECT_FAILED, False, None, 0.0) is None  # once
    run.cancelled_by_caller(step.pick)  # counted already: not again
    report = core.counters.take_report(0)
    assert report is not None
    assert report.num_calls_started == 2 and report.num_calls_finished == 2
    assert report.num_calls_finished_with_client_failed_to_send == 2


def test_a_configured_retry_sleeps_then_picks_again_within_the_deadline() -> None:
    core = serving_core(80)
    policy = RetryPolicy(3, 0.01, 0.1, 2.0, frozenset({UNAVAILABLE}))
    run = UnaryAttempts(core, 1, Attempts(policy, None), deadline=1.0)
    p = core.pick()
    assert p is not None
    # Sent, then failed: no transparent retry; the policy's backoff.
    step = run.failed(p, UNAVAILABLE, "reset", True, None, 0.0)
    assert isinstance(step, Sleep) and 0 <= step.delay < 0.01
    pushback = (("grpc-retry-pushback-ms", "500"),)
    assert run.failed(p, UNAVAILABLE, "reset", True, pushback, 0.1) == Sleep(0.5)
    assert run.time_left(0.7) == pytest.approx(0.3)
    assert run.failed(p, UNAVAILABLE, "reset", True, None, 0.7) is None  # attempts used up
    assert run.failed(p, grpc.StatusCode.INTERNAL, "x", True, None, 0.0) is None
    again = UnaryAttempts(core, 0, Attempts(policy, None), deadline=1.0)
    assert again.failed(p, UNAVAILABLE, "reset", True, pushback, 0.6) is None  # past deadline


def test_hedged_attempts_start_on_a_new_backend_or_wait_for_a_pick() -> None:
    core = serving_core(80, 81)
    run = HedgedAttempts(core, HedgingPolicy(3, 0.05, frozenset({UNAVAILABLE})), None, 10.0)
    first = core.pick()
    assert first is not None
    run.started(first, 0.0)
    assert run.wake_at() == 0.05 and run.timer(0.01) is None
    step = run.timer(0.05)
    assert isinstance(step, Start) and step.pick.target.address != first.target.address
    run.started(step.pick, 0.05)
    assert not run.ended(first, UNAVAILABLE, "reset", True, None, 0.06)  # non-fatal: go on
    assert not run.ended(step.pick, UNAVAILABLE, "reset", True, None, 0.07)
    for sub in list(core.subchannels.values()):
        core.set_state(sub, TRANSIENT_FAILURE)
    assert run.timer(0.07) is WAIT_FOR_PICK  # none READY, none in flight
