"""Hedged calls (gRFC A6 `hedgingPolicy`) in the thin client: the policy is
read from the `grpc.service_config` option as gRPC reads it (one with a
retry policy too is refused), the I/O-free decisions (client_lib.hedging)
on their own, and on the wire: a backend that accepts calls and never
answers, in a pool of 3 behind a real balancer and Redis at the default
pool settings, costs no call with hedging on and a bounded count without
(each run prints a `hanging-backend:` row; run with -s to see them); a
non-fatal status moves on at once, a fatal one ends the call."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from client_lib import LookasideChannel
from client_lib.aio import LookasideAioChannel
from client_lib.hedging import Hedge, HedgingPolicy
from client_lib.picker import Pick
from client_lib.retry import RetryConfig, ServiceConfigError, Throttle
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from tests.client_lib.scripted import client, server
from tests.support import (
    BalancerHandle,
    LoopThread,
    RouteGuideBackend,
    register_all,
    start_backends,
    wait_until,
)

KINDS = ["sync", "aio"]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
INTERNAL = grpc.StatusCode.INTERNAL
SERVICE = {"service": "routeguide.RouteGuide"}


def hedging(**overrides: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "maxAttempts": 3,
        "hedgingDelay": "0.05s",
        "nonFatalStatusCodes": ["UNAVAILABLE"],
    }
    p.update(overrides)
    return p


def options(policy: dict[str, Any] | None = None, **extra: Any) -> list[tuple[str, str]]:
    config = {"methodConfig": [{"name": [SERVICE], "hedgingPolicy": policy or hedging()}]}
    return [("grpc.service_config", json.dumps({**config, **extra}))]


# -- the service config --------------------------------------------------------------


def test_hedging_policy_is_read_as_grpc_does() -> None:
    config = RetryConfig.from_options(
        options(hedging(maxAttempts=9, hedgingDelay="0.1s", nonFatalStatusCodes=["internal", 14]))
    )
    p = config.hedging("/routeguide.RouteGuide/GetFeature")
    assert p == HedgingPolicy(5, 0.1, frozenset({INTERNAL, UNAVAILABLE}))  # capped at 5
    assert config.policy("/routeguide.RouteGuide/GetFeature") is None
    bare = HedgingPolicy.parse({"maxAttempts": 2}, "p")
    assert (bare.delay, bare.non_fatal) == (0.0, frozenset())  # all at once; every code fatal
    assert HedgingPolicy.parse(hedging(hedgingDelay="0s"), "p").delay == 0.0
    off = RetryConfig.from_options([*options(), ("grpc.enable_retries", 0)])
    assert off.hedging("/routeguide.RouteGuide/GetFeature") is None


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (hedging(maxAttempts=1), "maxAttempts must be an integer of at least 2"),
        (hedging(hedgingDelay="50ms"), 'hedgingDelay must be a duration like "0.1s"'),
        (hedging(nonFatalStatusCodes="UNAVAILABLE"), "nonFatalStatusCodes must be a list"),
        (hedging(nonFatalStatusCodes=["OK"]), "'OK' is not a status code other than OK"),
        ("fast", "hedgingPolicy must be an object"),
    ],
)
def test_a_bad_hedging_policy_is_refused_in_the_constructor(policy: Any, message: str) -> None:
    config = [("grpc.service_config", json.dumps({"methodConfig": [
        {"name": [SERVICE], "hedgingPolicy": policy}
    ]}))]  # fmt: skip
    with pytest.raises(ServiceConfigError, match=message):
        RetryConfig.from_options(config)
    with pytest.raises(ValueError, match=message):
        LookasideChannel("svc", "127.0.0.1:1", options=config)


def test_a_method_config_with_both_policies_is_refused() -> None:
    retry = {
        "maxAttempts": 3,
        "initialBackoff": "0.1s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    both = json.dumps(
        {"methodConfig": [{"name": [SERVICE], "retryPolicy": retry, "hedgingPolicy": hedging()}]}
    )
    with pytest.raises(ServiceConfigError, match=r"methodConfig\[0\] has both retryPolicy and"):
        LookasideChannel("svc", "127.0.0.1:1", options=[("grpc.service_config", both)])
    # One method may hedge and another retry, each in its own method config.
    apart = RetryConfig.from_options(
        [
            (
                "grpc.service_config",
                json.dumps(
                    {
                        "methodConfig": [
                            {
                                "name": [{**SERVICE, "method": "GetFeature"}],
                                "hedgingPolicy": hedging(),
                            },
                            {"name": [SERVICE], "retryPolicy": retry},
                        ]
                    }
                ),
            )
        ]
    )
    assert apart.hedging("/routeguide.RouteGuide/GetFeature") is not None
    assert apart.policy("/routeguide.RouteGuide/GetFeature") is None
    assert apart.policy("/routeguide.RouteGuide/ListFeatures") is not None
    assert apart.hedging("/routeguide.RouteGuide/ListFeatures") is None


# -- the decisions, I/O-free ---------------------------------------------------------


class _Target:
    def __init__(self, address: str) -> None:
        self.address = address


def picks(*addresses: str) -> tuple[Pick, ...]:
    return tuple(Pick(_Target(a), (), a) for a in addresses)


def test_attempts_start_a_delay_apart_on_backends_not_tried_yet() -> None:
    h = Hedge(HedgingPolicy(3, 0.05, frozenset()), None, deadline=10.0)
    h.started("a", 0.0)
    assert h.wake_at() == 0.05 and not h.due(0.04) and h.due(0.05)
    assert {h.choose(picks("a", "b", "c")).target.address for _ in range(50)} == {"b", "c"}  # type: ignore[union-attr]
    h.started("b", 0.05)
    assert h.choose(picks("a", "b", "c")).target.address == "c"  # type: ignore[union-attr]
    h.started("c", 0.1)
    assert h.wake_at() is None and not h.due(5.0)  # maxAttempts started
    assert h.choose(picks("a", "b")) is not None  # every one tried: any READY
    assert h.choose(()) is None
    assert h.ended(UNAVAILABLE, (), 0.2)  # no non-fatal codes: any failure ends the call
    assert h.in_flight == 2


def test_ok_or_a_fatal_status_ends_the_call_and_a_non_fatal_one_goes_on_at_once() -> None:
    policy = HedgingPolicy(3, 1.0, frozenset({UNAVAILABLE}))
    h = Hedge(policy, None, deadline=None)
    h.started("a", 0.0)
    h.started("b", 1.0)
    assert h.ended(grpc.StatusCode.OK, (), 1.5)  # the first answer wins
    h = Hedge(policy, None, deadline=None)
    h.started("a", 0.0)
    h.started("b", 1.0)
    assert h.ended(INTERNAL, (), 1.2)  # fatal: the call ends, the others are cancelled
    h = Hedge(policy, None, deadline=None)
    h.started("a", 0.0)
    assert not h.ended(UNAVAILABLE, (), 0.3)
    assert h.due(0.3)  # the next attempt at once, not a delay later
    h.started("b", 0.3)
    assert not h.ended(UNAVAILABLE, (("grpc-retry-pushback-ms", "200"),), 0.4)
    assert h.wake_at() == pytest.approx(0.6) and not h.due(0.5)  # the server's pushback
    h.started("c", 0.6)
    assert h.ended(UNAVAILABLE, (), 0.7)  # 3 attempts made, none in flight: it ends
    h = Hedge(policy, None, deadline=None)
    h.started("a", 0.0)
    assert h.ended(UNAVAILABLE, (("grpc-retry-pushback-ms", "-1"),), 0.1)  # stop, says the server


def test_deadline_throttle_and_a_never_sent_attempt() -> None:
    policy = HedgingPolicy(3, 0.5, frozenset({UNAVAILABLE}))
    h = Hedge(policy, None, deadline=0.4)
    h.started("a", 0.0)
    assert h.wake_at() == 0.4 and not h.due(0.4)  # the next one would start after the deadline
    throttle = Throttle(4, 1)
    throttle.tokens = 3.0  # above half: hedging allowed
    h = Hedge(policy, throttle, deadline=None)
    h.started("a", 0.0)
    assert h.due(0.5)
    h.started("b", 0.5)
    assert not h.ended(UNAVAILABLE, (), 0.6)  # takes a token: 2, not above half
    assert h.wake_at() is None and throttle.tokens == 2.0
    assert h.ended(grpc.StatusCode.OK, (), 0.7) and throttle.tokens == 3.0
    h = Hedge(HedgingPolicy(2, 0.5, frozenset()), None, deadline=None)
    h.started("a", 0.0)
    # gRFC A6 transparent retry: an attempt that never left the process
    # goes again whatever the codes, and does not count.
    assert not h.ended(UNAVAILABLE, (), 0.1, never_sent=True) and h.due(0.1)
    h.started("b", 0.1)
    h.started("c", 0.6)
    assert h.wake_at() is None


# -- on the wire ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_non_fatal_status_moves_on_at_once_and_a_fatal_one_ends_the_call(
    kind, lb_peer, backends, clients
) -> None:  # type: ignore[no-untyped-def]
    a, b = start_backends(backends, 2)
    slow_hedges = options(hedging(hedgingDelay="30s"))  # only failures start a new attempt
    c = client(clients, kind, lb_peer.address, options=slow_hedges)
    lb_peer.next_stream().initial().servers(server(a.port), server(b.port))
    wait_until(lambda: len(c.ready()) == 2)
    a.failures, b.failures = [(UNAVAILABLE, ())], [(UNAVAILABLE, ())]
    assert c.call(timeout=10) in (a.name, b.name)
    assert a.calls + b.calls == 3  # one failed each once; the third attempt answered
    a.failures, b.failures = [(INTERNAL, ())], [(INTERNAL, ())]
    assert c.call(timeout=10) is INTERNAL  # fatal: no other attempt
    assert a.calls + b.calls == 4
    report = c.channel.counters.take_report(0)
    assert (report.num_calls_started, report.num_calls_finished) == (4, 4)


class Load:
    """`workers` callers, each making `calls` GetFeature calls with a 1 s
    deadline, one after another; counts the failures by status code."""

    def __init__(self, kind: str, channel: Any, loop: LoopThread | None) -> None:
        self.kind, self.channel, self.loop = kind, channel, loop
        self.failed: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()

    def run(self, workers: int, calls: int) -> None:
        if self.loop is None:
            stub = rg_grpc.RouteGuideStub(self.channel)
            threads = [
                threading.Thread(target=self._sync_worker, args=(stub, calls))
                for _ in range(workers)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            return

        async def load() -> None:
            stub = rg_grpc.RouteGuideStub(self.channel)
            await asyncio.gather(*(self._aio_worker(stub, calls) for _ in range(workers)))

        self.loop.run(load(), 120)

    def _sync_worker(self, stub: Any, calls: int) -> None:
        for i in range(calls):
            try:
                self.answered[stub.GetFeature(rg.Point(latitude=i), timeout=1.0).name] += 1
            except grpc.RpcError as exc:
                self.failed[exc.code().name] += 1

    async def _aio_worker(self, stub: Any, calls: int) -> None:
        for i in range(calls):
            try:
                self.answered[(await stub.GetFeature(rg.Point(latitude=i), timeout=1.0)).name] += 1
            except grpc.aio.AioRpcError as exc:
                self.failed[exc.code().name] += 1


@pytest.fixture
def hanging_pool(
    balancer: BalancerHandle, backends: list[RouteGuideBackend], pool_name: str
) -> Iterator[list[RouteGuideBackend]]:
    """Three backends in a pool at the default settings; the third accepts
    GetFeature calls and never answers them, its health stays SERVING."""
    three = start_backends(backends, 3)
    register_all(balancer, pool_name, three)
    three[2].hang.set()
    yield three
    three[2].hang.clear()


def open_channel(kind: str, pool: str, balancer: str, opts: Any) -> tuple[Any, LoopThread | None]:
    if kind == "sync":
        return LookasideChannel(pool, balancer, options=opts), None
    loop = LoopThread("hedging-client")

    async def make() -> LookasideAioChannel:
        return LookasideAioChannel(pool, balancer, options=opts)

    return loop.run(make()), loop


def close_channel(channel: Any, loop: LoopThread | None) -> None:
    if loop is None:
        channel.close()
        return
    loop.run(channel.close())
    loop.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hedged", [True, False], ids=["hedging", "no-hedging"])
def test_a_backend_that_never_answers(
    kind: str, hedged: bool, hanging_pool, balancer: BalancerHandle, pool_name: str
) -> None:  # type: ignore[no-untyped-def]
    opts = options(hedging(hedgingDelay="0.08s")) if hedged else []
    channel, loop = open_channel(kind, pool_name, balancer.address, opts)
    try:
        wait_until(
            lambda: (
                sum(s is grpc.ChannelConnectivity.READY for s in channel.backend_states().values())
                == 3
            )
        )
        load = Load(kind, channel, loop)
        # Hedged, every call that meets the silent backend is answered by
        # another; unhedged, each such call waits out its deadline, so a
        # shorter run says enough.
        workers, calls = (4, 30) if hedged else (3, 4)
        load.run(workers, calls)
        total = workers * calls
        failed = sum(load.failed.values())
        print(f"hanging-backend: {kind} hedging={hedged} calls={total} failed={failed}")
        assert sum(load.answered.values()) + failed == total
        if hedged:
            assert load.failed == Counter(), load.failed
            assert set(load.answered) == {hanging_pool[0].name, hanging_pool[1].name}
        else:
            # Round robin gives the silent backend a third of the calls.
            assert set(load.failed) == {"DEADLINE_EXCEEDED"}
            assert total // 3 - 2 <= load.failed["DEADLINE_EXCEEDED"] <= total // 3 + 2
    finally:
        close_channel(channel, loop)


@pytest.mark.parametrize("kind", KINDS)
def test_the_first_answer_wins_and_the_other_attempt_is_cancelled(
    kind, lb_peer, backends, clients
) -> None:  # type: ignore[no-untyped-def]
    silent, good = start_backends(backends, 2)
    silent.hang.set()
    c = client(clients, kind, lb_peer.address, options=options())
    lb_peer.next_stream().initial().servers(server(silent.port), server(good.port))
    wait_until(lambda: len(c.ready()) == 2)
    # Round robin: one of the two calls starts on the silent backend, and
    # its hedge, 50 ms later, on the other.
    assert [c.call(timeout=60), c.call(timeout=60)] == [good.name, good.name]
    # The silent backend sees its call cancelled (it counts a call when the
    # caller has gone), long before the 60 s deadline.
    wait_until(lambda: silent.calls == 1)
    assert good.calls == 2
    report = c.channel.counters.take_report(0)
    assert (report.num_calls_started, report.num_calls_finished) == (3, 3)
    if c.loop is not None:

        async def attempts_left() -> list[asyncio.Task[Any]]:
            return [
                t
                for t in asyncio.all_tasks()
                if not t.done() and getattr(t.get_coro(), "__name__", "") == "_settle"
            ]

        assert c.loop.run(attempts_left()) == []
