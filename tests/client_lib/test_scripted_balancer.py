"""Both thin clients against a scripted BalanceLoad peer: lists pushed and
replaced, an empty list, malformed entries, fallback_response, stream ends
with each status, a balancer that never answers, switching balancers."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading

import grpc
import pytest

from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from tests.client_lib.scripted import Client, ScriptedBalancer, address_of, client, server
from tests.support import RouteGuideBackend, start_backends, wait_until

KINDS = ["sync", "aio"]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def names(c: Client, n: int) -> list[object]:
    return [c.call() for _ in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("kind", KINDS)
def test_lists_pushed_and_replaced(kind, lb_peer, backends, clients) -> None:  # type: ignore[no-untyped-def]
    one, two, three = start_backends(backends, 3)
    c = client(clients, kind, lb_peer.address)
    stream = lb_peer.next_stream()
    assert stream.first_request().initial_request.name == "svc.test:443"
    stream.initial().servers(server(one.port, "t1"))
    # A call made before any backend is READY waits for it, and succeeds.
    assert c.call() == one.name
    stream.servers(server(two.port, "t2"), server(three.port, "t3"))
    wait_until(lambda: c.ready() == {address_of(two.port), address_of(three.port)})
    got = names(c, 20)
    assert sorted(set(got)) == sorted({two.name, three.name})
    assert got.count(two.name) == 10
    assert dict(two.tokens) == {"t2": 10} and dict(three.tokens) == {"t3": 10}
    assert one.calls == 1


@pytest.mark.parametrize("kind", KINDS)
def test_empty_list_fails_fast_calls_until_a_list(kind, lb_peer, backends, clients) -> None:  # type: ignore[no-untyped-def]
    (one,) = start_backends(backends, 1)
    c = client(clients, kind, lb_peer.address)
    stream = lb_peer.next_stream().initial().servers(server(one.port))
    assert c.call() == one.name
    stream.servers()
    wait_until(lambda: c.states() == {})
    assert c.call() is UNAVAILABLE
    assert "empty server list" in c.last_details
    stream.servers(server(one.port))
    wait_until(lambda: c.states() != {})
    assert c.call() == one.name


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_entries_are_skipped(kind, lb_peer, backends, clients) -> None:  # type: ignore[no-untyped-def]
    (one,) = start_backends(backends, 1)
    c = client(clients, kind, lb_peer.address)
    long_token = "x" * 60
    lb_peer.next_stream().initial().servers(
        server(one.port, ip=b"\x7f\x00\x01"),  # 3-byte address
        server(0, "port-zero"),
        server(one.port, long_token),  # kept, token ignored
    )
    wait_until(lambda: c.ready() == {address_of(one.port)})
    assert c.channel.backends() == [(address_of(one.port), "")]
    assert names(c, 3) == [one.name] * 3
    assert dict(one.tokens) == {"": 3}


@pytest.mark.parametrize("kind", KINDS)
def test_fallback_response_and_back(kind, lb_peer, backends, clients) -> None:  # type: ignore[no-untyped-def]
    listed, spare = start_backends(backends, 2)
    c = client(clients, kind, lb_peer.address, fallback_targets=[f"127.0.0.1:{spare.port}"])
    stream = lb_peer.next_stream().initial().servers(server(listed.port, "a"))
    assert c.call() == listed.name
    stream.fallback()
    wait_until(lambda: c.channel.in_fallback and c.ready() == {address_of(spare.port)})
    assert names(c, 3) == [spare.name] * 3
    # The same list again leaves fallback (a new list always does).
    stream.servers(server(listed.port, "a"))
    wait_until(lambda: not c.channel.in_fallback)
    assert c.call() == listed.name


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.OK,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ],
)
def test_stream_end_keeps_the_list_and_reconnects(kind, code, lb_peer, backends, clients) -> None:  # type: ignore[no-untyped-def]
    (one,) = start_backends(backends, 1)
    c = client(clients, kind, lb_peer.address)
    stream = lb_peer.next_stream().initial().servers(server(one.port))
    # Only to see the list applied: wait-for-ready, since a first attempt
    # that failed before this stream (a busy machine) puts a fail-fast call
    # in TRANSIENT_FAILURE until the list arrives, as it would in C-core.
    assert c.call(wait_for_ready=True) == one.name
    stream.end(code, "scripted end")
    again = lb_peer.next_stream(timeout=15)
    assert again.first_request().initial_request.name == "svc.test:443"
    assert names(c, 3) == [one.name] * 3


@pytest.mark.parametrize("kind", KINDS)
def test_balancer_that_never_answers(kind, lb_peer, backends, clients) -> None:  # type: ignore[no-untyped-def]
    (spare,) = start_backends(backends, 1)
    bare = client(clients, kind, lb_peer.address, fallback_timeout=0.3)
    lb_peer.next_stream()  # opened, never answered
    wait_until(lambda: bare.channel.session.in_fallback)
    assert bare.call() is UNAVAILABLE
    assert "no server list within 0.3s" in bare.last_details
    fb = client(
        clients, kind, lb_peer.address, fallback_timeout=0.3,
        fallback_targets=[f"127.0.0.1:{spare.port}"],
    )  # fmt: skip
    lb_peer.next_stream()
    assert fb.call() == spare.name
    assert fb.channel.in_fallback


@pytest.mark.parametrize("kind", KINDS)
def test_switching_between_two_balancers(kind, backends, clients) -> None:  # type: ignore[no-untyped-def]
    a, b = ScriptedBalancer(), ScriptedBalancer()
    try:
        one, two = start_backends(backends, 2)
        c = client(clients, kind, [a.address, b.address])
        a.next_stream().initial().servers(server(one.port))
        assert c.call() == one.name
        a.stop()  # the stream breaks: the client moves to b and keeps its list
        stream = b.next_stream(timeout=15)
        assert c.call() == one.name
        stream.initial().servers(server(two.port))
        wait_until(lambda: c.ready() == {address_of(two.port)})
        assert c.call() == two.name
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_refused_first_balancer_moves_on_without_backoff(
    kind, lb_peer, backends, clients, caplog
) -> None:  # type: ignore[no-untyped-def]
    one, spare = start_backends(backends, 2)
    refused = f"127.0.0.1:{free_port()}"
    caplog.set_level(logging.INFO, logger="lookaside.client")
    c = client(clients, kind, [refused, lb_peer.address], fallback_targets=[address_of(spare.port)])
    lb_peer.next_stream().initial().servers(server(one.port))
    assert c.call() == one.name
    # The refused stream is the only one that ended, and the client went on
    # to the next balancer at once: no backoff, no fallback.
    logged = [r.getMessage() for r in caplog.records]
    ended = [m for m in logged if "balancer stream to" in m]
    assert len(ended) == 1, logged
    assert f"stream to {refused} ended (UNAVAILABLE" in ended[0]
    assert ended[0].endswith(f"next {lb_peer.address} in 0.00s")
    assert not [m for m in logged if "entering fallback" in m]
    assert spare.calls == 0


def test_bad_arguments_are_refused_in_the_constructor() -> None:
    from client_lib import LookasideChannel

    with pytest.raises(ValueError, match="at most 255 bytes"):
        LookasideChannel("x" * 256, "127.0.0.1:1")
    with pytest.raises(ValueError, match="no balancer address"):
        LookasideChannel("svc", [])
    from client_lib.aio import LookasideAioChannel

    # Refused before it needs a running loop, let alone a connection.
    with pytest.raises(ValueError, match="at most 255 bytes"):
        LookasideAioChannel("x" * 256, "127.0.0.1:1")


@pytest.mark.parametrize("kind", KINDS)
def test_all_backends_down_fail_fast_but_wait_for_ready_waits(kind, lb_peer, clients) -> None:  # type: ignore[no-untyped-def]
    backend = RouteGuideBackend()
    port = free_port()
    c = client(clients, kind, lb_peer.address)
    lb_peer.next_stream().initial().servers(server(port))
    wait_until(
        lambda: c.states().get(address_of(port)) is grpc.ChannelConnectivity.TRANSIENT_FAILURE
    )
    assert c.call() is UNAVAILABLE
    assert "TRANSIENT_FAILURE" in c.last_details
    # A wait-for-ready call waits through TRANSIENT_FAILURE until its deadline.
    assert c.call(timeout=0.3, wait_for_ready=True) is grpc.StatusCode.DEADLINE_EXCEEDED
    del backend


@pytest.mark.parametrize("kind", KINDS)
def test_callers_before_the_first_list_wait_for_it(kind, lb_peer, backends, clients) -> None:  # type: ignore[no-untyped-def]
    (one,) = start_backends(backends, 1)
    c = client(clients, kind, lb_peer.address)
    stream = lb_peer.next_stream()
    results: list[object] = []
    if c.loop is None:
        threads = [threading.Thread(target=lambda: results.append(c.call())) for _ in range(8)]
        for t in threads:
            t.start()
    else:

        async def eight() -> None:
            calls = [c.stub.GetFeature(rg.Point(), timeout=10) for _ in range(8)]
            early_stream = c.stub.ListFeatures(rg.Rectangle(), timeout=10)
            stream.initial().servers(server(one.port))  # the list arrives while they wait
            results.extend(f.name for f in await asyncio.gather(*calls))
            assert [f.name async for f in early_stream] == [f"{one.name}-{i}" for i in range(3)]

        c.loop.run(eight(), 20)
    if c.loop is None:
        stream.initial().servers(server(one.port))
        for t in threads:
            t.join(20)
    assert results == [one.name] * 8
    # Streaming calls wait too, on either kind.
    assert c.call_stream() == [f"{one.name}-{i}" for i in range(3)]


@pytest.mark.parametrize("kind", KINDS)
def test_losing_the_balancer_and_every_backend_enters_fallback(kind, backends, clients) -> None:  # type: ignore[no-untyped-def]
    listed, spare = start_backends(backends, 2)
    peer = ScriptedBalancer()
    try:
        fallback = [f"127.0.0.1:{spare.port}"]
        c = client(clients, kind, peer.address, fallback_targets=fallback, fallback_timeout=60)
        peer.next_stream().initial().servers(server(listed.port))
        assert c.call() == listed.name
        peer.stop()  # the balancer goes: the list stays while its backend works
        assert names(c, 3) == [listed.name] * 3 and not c.channel.in_fallback
        listed.stop()  # and now the backend too
        wait_until(lambda: c.channel.in_fallback, timeout=20)
        assert c.call(wait_for_ready=True) == spare.name
    finally:
        peer.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_a_silent_balancer_is_given_up_for_the_next(kind, backends, clients) -> None:  # type: ignore[no-untyped-def]
    (one,) = start_backends(backends, 1)
    silent, good = ScriptedBalancer(), ScriptedBalancer()
    try:
        c = client(clients, kind, [silent.address, good.address], fallback_timeout=0.3)
        silent.next_stream()  # accepted, never answered
        good.next_stream().initial().servers(server(one.port))
        assert c.call(wait_for_ready=True) == one.name
        assert not c.channel.in_fallback  # the list from the next balancer left fallback
    finally:
        silent.stop()
        good.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_a_call_that_never_left_is_retried_once_elsewhere(kind, lb_peer, backends, clients) -> None:  # type: ignore[no-untyped-def]
    (live,) = start_backends(backends, 1)
    dead = free_port()
    c = client(clients, kind, lb_peer.address)
    lb_peer.next_stream().initial().servers(server(live.port, "live"), server(dead, "dead"))
    wait_until(
        lambda: (
            c.states()
            == {
                address_of(live.port): grpc.ChannelConnectivity.READY,
                address_of(dead): grpc.ChannelConnectivity.TRANSIENT_FAILURE,
            }
        )
    )
    # The race a backend's death opens: the picker still holds it as READY
    # while its connection is gone. Here the stale view is made to last.
    core = c.channel._core
    core.set_state(core.subchannels[address_of(dead)], grpc.ChannelConnectivity.READY)
    assert names(c, 10) == [live.name] * 10  # none failed: the dead picks went again
    report = c.channel.counters.take_report(0)
    assert report.num_calls_started == 15  # 10 calls, 5 of them twice
    assert report.num_calls_finished_with_client_failed_to_send == 5
    assert report.num_calls_finished_known_received == 10
    assert live.calls == 10


@pytest.mark.parametrize("kind", KINDS)
def test_a_call_after_close_is_cancelled(kind, lb_peer, backends, clients) -> None:  # type: ignore[no-untyped-def]
    (one,) = start_backends(backends, 1)
    c = Client(kind, "svc", lb_peer.address)
    lb_peer.next_stream().initial().servers(server(one.port))
    assert c.call() == one.name
    if c.loop is None:
        c.channel.close()
    else:
        c.loop.run(c.channel.close())
    assert c.call() is grpc.StatusCode.CANCELLED
    assert c.last_details == "the channel was closed"
    c.close()


def test_sync_futures_and_streams_queue_without_blocking_the_caller(
    lb_peer, backends, clients
) -> None:  # type: ignore[no-untyped-def]
    (one,) = start_backends(backends, 1)
    c = client(clients, "sync", lb_peer.address)
    stream = lb_peer.next_stream()
    future = c.stub.GetFeature.future(rg.Point(), timeout=10)
    rows = c.stub.ListFeatures(rg.Rectangle(), timeout=10)
    doomed = c.stub.GetFeature.future(rg.Point(), timeout=10)
    assert not future.done() and future.running()
    seen: list[object] = []
    future.add_done_callback(seen.append)
    assert doomed.cancel() and doomed.cancelled()
    stream.initial().servers(server(one.port))
    assert future.result(10).name == one.name
    assert [f.name for f in rows] == [f"{one.name}-{i}" for i in range(3)]
    assert future.code() is grpc.StatusCode.OK
    wait_until(lambda: seen == [future])
    with pytest.raises(grpc.RpcError) as info:
        doomed.result(1)
    assert info.value.code() is grpc.StatusCode.CANCELLED
    assert one.calls == 2  # the cancelled one never went out
