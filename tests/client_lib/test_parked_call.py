"""The sync channel keeps each backend channel's completion thread for as
long as that channel is open (client_lib._spin): one parked call per
backend channel, which never reaches the backend, keeps grpcio from ending
and restarting the thread between futures; closing the channel ends it."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from client_lib import LookasideChannel, _spin
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from tests.client_lib.scripted import ScriptedBalancer, address_of, server
from tests.support import RouteGuideBackend, wait_until


class _SeenMethods(grpc.GenericRpcHandler):
    """Every method a call to this server named that no servicer has."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    def service(self, handler_call_details: Any) -> None:
        self.methods.append(handler_call_details.method)
        return None


@pytest.fixture
def backend() -> Iterator[tuple[RouteGuideBackend, _SeenMethods]]:
    b = RouteGuideBackend("b0")
    seen = _SeenMethods()
    b.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
    rg_grpc.add_RouteGuideServicer_to_server(b, b.server)
    b.server.add_generic_rpc_handlers((seen,))
    b.port = b.server.add_insecure_port("127.0.0.1:0")
    b.server.start()
    yield b, seen
    b.stop()


def _grpc_threads() -> set[threading.Thread]:
    # grpcio's own threads (a channel's completion thread among them) run
    # cygrpc's `_run` wrapper
    return {t for t in threading.enumerate() if t.name.endswith("(_run)")}


def _futures(channel: LookasideChannel, n: int) -> list[str]:
    stub = rg_grpc.RouteGuideStub(channel)
    futures = [
        stub.GetFeature.future(rg.Point(), timeout=10, wait_for_ready=True) for _ in range(n)
    ]
    return [f.result().name for f in futures]


def test_futures_park_one_call_that_never_reaches_the_backend_and_close_ends_it(
    lb_peer: ScriptedBalancer, backend: tuple[RouteGuideBackend, _SeenMethods]
) -> None:
    b, seen = backend
    before = _grpc_threads()
    channel = LookasideChannel("svc.test:443", lb_peer.address)
    try:
        lb_peer.next_stream().initial().servers(server(b.port, token="t0"))
        assert _futures(channel, 20) == ["b0"] * 20
        sub = channel._core.subchannels[address_of(b.port)]
        assert sub.parked  # a call is parked on the backend's channel
        # with no call of the caller's in flight, grpc still counts the parked
        # one, so the channel's completion thread stays for the next futures
        wait_until(lambda: sub.channel._call_state.managed_calls == 1)
        assert _futures(channel, 20) == ["b0"] * 20
        assert b.calls == 40 and b.tokens == {"t0": 40}
        assert seen.methods == []  # the parked call was never sent
        # the ClientStats count only the caller's calls
        wait_until(lambda: channel.counters.finished == 40)
        assert channel.counters.started == 40
    finally:
        channel.close()
    assert sub.channel._call_state.managed_calls == 0
    wait_until(lambda: not (_grpc_threads() - before))


def test_past_the_limit_a_channel_keeps_grpcs_own_behaviour(
    lb_peer: ScriptedBalancer,
    backend: tuple[RouteGuideBackend, _SeenMethods],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b, _ = backend
    monkeypatch.setattr(_spin, "PIN_LIMIT", 0)
    channel = LookasideChannel("svc.test:443", lb_peer.address)
    try:
        lb_peer.next_stream().initial().servers(server(b.port))
        assert _futures(channel, 10) == ["b0"] * 10
        sub = channel._core.subchannels[address_of(b.port)]
        assert sub.parked is False
        wait_until(lambda: sub.channel._call_state.managed_calls == 0)
    finally:
        channel.close()
