"""Configured retries (gRFC A6 retryPolicy) in the thin client: the service
config is parsed as gRPC does (bad ones refused in the constructor), and
with it a unary call that fails with a retryable status goes again on a
new pick, within its attempts, backoff, pushback, throttle and deadline.
The backends are real gRPC servers that fail as each test scripts; the
balancer is the scripted one."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from client_lib import LookasideChannel
from client_lib.retry import (
    Attempts,
    RetryConfig,
    RetryPolicy,
    ServiceConfigError,
    Throttle,
)
from tests.client_lib.scripted import client, server
from tests.support import RouteGuideBackend, start_backends

KINDS = ["sync", "aio"]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
GET_FEATURE = "/routeguide.RouteGuide/GetFeature"


def policy(**overrides: Any) -> dict[str, Any]:
    p = {
        "maxAttempts": 3,
        "initialBackoff": "0.01s",
        "maxBackoff": "0.05s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    p.update(overrides)
    return p


def service_config(retry_policy: dict[str, Any] | None = None, **extra: Any) -> str:
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{"service": "routeguide.RouteGuide"}],
                    "retryPolicy": retry_policy or policy(),
                }
            ],
            **extra,
        }
    )


def options(config: str | None = None, **more: Any) -> list[tuple[str, Any]]:
    return [("grpc.service_config", config or service_config()), *more.items()]


# -- the service config --------------------------------------------------------------


def test_policy_lookup_prefers_the_method_then_its_service_then_the_default() -> None:
    config = RetryConfig.from_options(
        options(
            json.dumps(
                {
                    "methodConfig": [
                        {"name": [{}], "retryPolicy": policy(maxAttempts=2)},
                        {"name": [{"service": "a.S"}], "retryPolicy": policy(maxAttempts=3)},
                        {
                            "name": [{"service": "a.S", "method": "M"}],
                            "retryPolicy": policy(maxAttempts=4),
                        },
                        {"name": [{"service": "b.S"}], "timeout": "1s"},
                    ]
                }
            )
        )
    )
    got = {m: config.policy(m) for m in ["/a.S/M", "/a.S/N", "/b.S/M", "/c.S/M"]}
    assert {m: p.max_attempts if p else None for m, p in got.items()} == {
        "/a.S/M": 4,
        "/a.S/N": 3,
        "/b.S/M": 2,  # b.S has a method config without a retry policy: the default's
        "/c.S/M": 2,
    }


def test_no_service_config_or_retries_disabled_means_no_policy() -> None:
    assert RetryConfig.from_options([]).policy(GET_FEATURE) is None
    disabled = RetryConfig.from_options(options(**{"grpc.enable_retries": 0}))
    assert disabled.policy(GET_FEATURE) is None
    assert RetryConfig.from_options(options()).policy(GET_FEATURE) is not None


def test_policy_values_are_read_as_grpc_does() -> None:
    p = RetryPolicy.parse(
        policy(
            maxAttempts=9,
            initialBackoff="1.5s",
            maxBackoff="2s",
            retryableStatusCodes=["unavailable", 4],
        ),
        "p",
    )
    assert p.max_attempts == 5  # capped, as gRFC A6 says
    assert (p.initial_backoff, p.max_backoff) == (1.5, 2.0)
    assert p.codes == {UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("not json", "is not JSON"),
        ("[]", "must be a JSON object"),
        (service_config(policy(maxAttempts=1)), "maxAttempts must be an integer of at least 2"),
        (service_config(policy(maxAttempts="3")), "maxAttempts must be an integer"),
        (service_config(policy(initialBackoff="100ms")), 'like "0.1s"'),
        (service_config(policy(maxBackoff="0s")), "maxBackoff must be above 0s"),
        (service_config(policy(backoffMultiplier=0)), "backoffMultiplier must be a number"),
        (service_config(policy(retryableStatusCodes=[])), "must be a non-empty list"),
        (service_config(policy(retryableStatusCodes=["OK"])), "'OK' is not a status code"),
        (service_config(policy(retryableStatusCodes=["NOPE"])), "'NOPE' is not a status code"),
        (service_config(retryThrottling={"maxTokens": 0, "tokenRatio": 1}), "maxTokens"),
        (service_config(retryThrottling={"maxTokens": 10, "tokenRatio": -1}), "tokenRatio"),
        (
            json.dumps({"methodConfig": [{"name": [{"method": "M"}], "retryPolicy": policy()}]}),
            "a method needs its service",
        ),
        (
            json.dumps(
                {
                    "methodConfig": [
                        {"name": [{"service": "s"}], "retryPolicy": policy()},
                        {"name": [{"service": "s"}], "retryPolicy": policy()},
                    ]
                }
            ),
            "named twice",
        ),
    ],
)
def test_a_bad_service_config_is_refused_in_the_constructor(bad: str, message: str) -> None:
    with pytest.raises(ServiceConfigError, match=message):
        RetryConfig.from_options(options(bad))
    with pytest.raises(ValueError, match=message):
        LookasideChannel("svc", "127.0.0.1:1", options=options(bad))


def test_backoff_stays_under_its_cap_and_grows() -> None:
    p = RetryPolicy.parse(policy(initialBackoff="0.1s", maxBackoff="0.3s"), "p")
    for retry, cap in [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.3)]:
        waits = [p.backoff(retry) for _ in range(200)]
        assert all(0 <= w <= cap for w in waits)
        assert max(waits) > cap / 2  # random over the whole range, not a constant


def test_attempts_obey_max_codes_and_pushback() -> None:
    p = RetryPolicy.parse(policy(maxAttempts=3), "p")
    a = Attempts(p, None)
    assert a.retry_after(grpc.StatusCode.INTERNAL, ()) is None  # not retryable
    assert a.retry_after(UNAVAILABLE, (("grpc-retry-pushback-ms", "250"),)) == 0.25
    assert a.retry_after(UNAVAILABLE, ()) is not None
    assert a.retry_after(UNAVAILABLE, ()) is None  # 3 attempts made
    for pushback in ["-1", "soon", ""]:
        assert (
            Attempts(p, None).retry_after(UNAVAILABLE, (("grpc-retry-pushback-ms", pushback),))
            is None
        )


def test_throttle_stops_retries_at_half_its_tokens_and_refills_on_success() -> None:
    t = Throttle(10, 0.5)
    p = RetryPolicy.parse(policy(maxAttempts=5), "p")
    allowed = [Attempts(p, t).retry_after(UNAVAILABLE, ()) is not None for _ in range(8)]
    assert allowed == [True, True, True, True, False, False, False, False]
    for _ in range(4):
        Attempts(p, t).succeeded()  # 2 + 4 x 0.5 = 4 tokens
    assert t.tokens == 4.0
    for _ in range(4):
        Attempts(p, t).succeeded()
    assert Attempts(p, t).retry_after(UNAVAILABLE, ()) is None  # 6 - 1 = 5: not above half
    for _ in range(3):
        Attempts(p, t).succeeded()
    assert Attempts(p, t).retry_after(UNAVAILABLE, ()) is not None  # 6.5 - 1 = 5.5
    t2 = Throttle(10, 0.5)
    for _ in range(30):
        t2.success()
    assert t2.tokens == 10.0  # never above maxTokens


# -- on the wire ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_retryable_failure_goes_again(kind, lb_peer, backends, clients) -> None:  # type: ignore[no-untyped-def]
    (one,) = start_backends(backends, 1)
    one.failures = [(UNAVAILABLE, ()), (UNAVAILABLE, ())]
    c = client(clients, kind, lb_peer.address, options=options())
    lb_peer.next_stream().initial().servers(server(one.port))
    assert c.call(wait_for_ready=True) == one.name
    assert one.calls == 3 and one.failures == []
    report = c.channel.counters.take_report(0)
    assert (report.num_calls_started, report.num_calls_finished) == (3, 3)
    assert report.num_calls_finished_known_received == 3  # the server answered each


@pytest.mark.parametrize("kind", KINDS)
def test_the_last_failure_is_returned_once_the_attempts_are_spent(
    kind, lb_peer, backends, clients
) -> None:  # type: ignore[no-untyped-def]
    (one,) = start_backends(backends, 1)
    one.failures = [(UNAVAILABLE, ())] * 5
    c = client(clients, kind, lb_peer.address, options=options())
    lb_peer.next_stream().initial().servers(server(one.port))
    assert c.call(wait_for_ready=True) is UNAVAILABLE
    assert c.last_details == f"{one.name} failed as scripted"
    assert one.calls == 3 and len(one.failures) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_without_a_policy_or_with_another_code_a_failure_is_final(
    kind, lb_peer, backends, clients
) -> None:  # type: ignore[no-untyped-def]
    (one,) = start_backends(backends, 1)
    one.failures = [(UNAVAILABLE, ()), (grpc.StatusCode.INTERNAL, ())]
    plain = client(clients, kind, lb_peer.address)
    with_policy = client(clients, kind, lb_peer.address, options=options())
    for _ in range(2):
        lb_peer.next_stream().initial().servers(server(one.port))
    # No policy: UNAVAILABLE from a server is not a transparent retry.
    assert plain.call(wait_for_ready=True) is UNAVAILABLE
    assert one.calls == 1
    # INTERNAL is not in retryableStatusCodes.
    assert with_policy.call(wait_for_ready=True) is grpc.StatusCode.INTERNAL
    assert one.calls == 2 and with_policy.call() == one.name


@pytest.mark.parametrize("kind", KINDS)
def test_a_negative_pushback_stops_the_retries_and_a_retry_repicks(
    kind, lb_peer, backends, clients
) -> None:  # type: ignore[no-untyped-def]
    a, b = start_backends(backends, 2)
    c = client(clients, kind, lb_peer.address, options=options())
    lb_peer.next_stream().initial().servers(server(a.port), server(b.port))
    assert c.call(wait_for_ready=True) in (a.name, b.name)
    assert c.call(wait_for_ready=True) in (a.name, b.name)
    a.failures = b.failures = [(UNAVAILABLE, (("grpc-retry-pushback-ms", "-1"),))]
    assert c.call(wait_for_ready=True) is UNAVAILABLE
    assert a.calls + b.calls == 3
    # A backend that always fails: the retry is a new pick, so it lands on
    # the other backend (round robin over the two).
    a.failures = [(UNAVAILABLE, ())] * 100
    b.failures = []
    assert [c.call(wait_for_ready=True) for _ in range(6)] == [b.name] * 6


@pytest.mark.parametrize("kind", KINDS)
def test_no_retry_starts_after_the_deadline_would_pass(kind, lb_peer, backends, clients) -> None:  # type: ignore[no-untyped-def]
    (one,) = start_backends(backends, 1)
    slow = policy(initialBackoff="30s", maxBackoff="30s")
    c = client(clients, kind, lb_peer.address, options=options(service_config(slow)))
    lb_peer.next_stream().initial().servers(server(one.port))
    assert c.call(wait_for_ready=True) == one.name
    one.failures = [(UNAVAILABLE, (("grpc-retry-pushback-ms", "3000"),))]
    assert c.call(timeout=1.0) is UNAVAILABLE  # a 3 s pushback does not fit in 1 s
    assert one.calls == 2


def test_the_backend_sub_channels_do_not_get_the_service_config(lb_peer, backends, clients) -> None:  # type: ignore[no-untyped-def]
    (one,) = start_backends(backends, 1)
    config = service_config(loadBalancingConfig=[{"grpclb": {}}])
    c = client(clients, "sync", lb_peer.address, options=options(config))
    lb_peer.next_stream().initial().servers(server(one.port))
    # With the grpclb config, a sub-channel to a plain backend address would
    # try to reach a balancer there; it is one backend's plain channel.
    assert c.call(wait_for_ready=True) == one.name
    assert isinstance(one, RouteGuideBackend) and one.calls == 1
