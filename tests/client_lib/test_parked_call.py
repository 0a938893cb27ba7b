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
from tests.client_lib.scripted import ScriptedBalancer, Stream, address_of, server
from tests.support import RouteGuideBackend, wait_until


class _SeenMethods(grpc.GenericRpcHandler):
    """Every method a call to this server named that no servicer has."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    def service(self, handler_call_details: Any) -> None:
        self.methods.append(handler_call_details.method)
        return None


def _backend(name: str) -> tuple[RouteGuideBackend, _SeenMethods]:
    b = RouteGuideBackend(name)
    seen = _SeenMethods()
    b.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
    rg_grpc.add_RouteGuideServicer_to_server(b, b.server)
    b.server.add_generic_rpc_handlers((seen,))
    b.port = b.server.add_insecure_port("127.0.0.1:0")
    b.server.start()
    return b, seen


@pytest.fixture
def two() -> Iterator[list[tuple[RouteGuideBackend, _SeenMethods]]]:
    pair = [_backend("b0"), _backend("b1")]
    yield pair
    for b, _ in pair:
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
    return sorted(f.result().name for f in futures)


def _serving(channel: LookasideChannel, stream: Stream, *ports: int) -> None:
    stream.servers(*(server(p, token=f"t{p}") for p in ports))
    want = {address_of(p) for p in ports}
    wait_until(
        lambda: (
            {a for a, s in channel.backend_states().items() if s is grpc.ChannelConnectivity.READY}
            == want
        )
    )


def test_futures_park_one_call_per_backend_that_never_reaches_it_and_close_ends_them(
    lb_peer: ScriptedBalancer, two: list[tuple[RouteGuideBackend, _SeenMethods]]
) -> None:
    before = _grpc_threads()
    channel = LookasideChannel("svc.test:443", lb_peer.address)
    try:
        _serving(channel, lb_peer.next_stream().initial(), *(b.port for b, _ in two))
        assert _futures(channel, 20) == ["b0"] * 10 + ["b1"] * 10
        subs = [channel._core.subchannels[address_of(b.port)] for b, _ in two]
        assert all(sub.parked for sub in subs)  # a call is parked on each backend's channel
        # with no call of the caller's in flight, grpc still counts the parked
        # one, so each channel's completion thread stays for the next futures
        wait_until(lambda: all(sub.channel._call_state.managed_calls == 1 for sub in subs))
        assert _futures(channel, 20) == ["b0"] * 10 + ["b1"] * 10
        for b, seen in two:
            assert b.calls == 20 and b.tokens == {f"t{b.port}": 20}
            assert seen.methods == []  # the parked call was never sent
        # the ClientStats count only the caller's calls
        wait_until(lambda: channel.counters.finished == 40)
        assert channel.counters.started == 40
    finally:
        channel.close()
    assert all(sub.channel._call_state.managed_calls == 0 for sub in subs)
    wait_until(lambda: not (_grpc_threads() - before))


def test_over_one_backend_or_past_the_limit_grpcs_own_behaviour(
    lb_peer: ScriptedBalancer,
    two: list[tuple[RouteGuideBackend, _SeenMethods]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (b0, _), (b1, _) = two
    channel = LookasideChannel("svc.test:443", lb_peer.address)
    try:
        stream = lb_peer.next_stream().initial()
        _serving(channel, stream, b0.port)
        assert _futures(channel, 10) == ["b0"] * 10
        sub = channel._core.subchannels[address_of(b0.port)]
        assert sub.parked is None  # one backend READY: nothing parked (yet)
        wait_until(lambda: sub.channel._call_state.managed_calls == 0)
        monkeypatch.setattr(_spin, "PIN_LIMIT", 0)
        _serving(channel, stream, b0.port, b1.port)
        assert _futures(channel, 10) == ["b0"] * 5 + ["b1"] * 5
        assert sub.parked is False  # past the limit: tried, nothing parked
        wait_until(lambda: sub.channel._call_state.managed_calls == 0)
    finally:
        channel.close()


def test_the_environment_turns_parking_off() -> None:
    import os
    import subprocess
    import sys

    script = (
        "import grpc\n"
        "from client_lib import _spin\n"
        "ch = grpc.insecure_channel('127.0.0.1:9')\n"
        "parked = _spin.pin(ch)\n"
        "print('parked' if parked else 'none')\n"
        "_spin.unpin(parked)\n"
        "ch.close()\n"
    )
    seen = {}
    for value in ("0", "1"):
        env = {**os.environ, "LOOKASIDE_CLIENT_PARK": value}
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        seen[value] = out.stdout.strip()
    assert seen == {"0": "none", "1": "parked"}
