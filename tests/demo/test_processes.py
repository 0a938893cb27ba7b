"""The article's experiment with real processes: 3 demo servers register
with a real balancer; the demo client spreads its calls over all 3 through
Lookaside, and sends them all to one without it. On SIGTERM each server
leaves the pool before it stops serving."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
from collections.abc import Callable

import grpc

from lookaside.demo.report import parse_summary
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from lookaside_registry.model import backend_id_for
from tests.demo.conftest import ROOT, DemoProcess, DemoServerProcess, demo_env
from tests.support import BalancerHandle, LbStream, wait_until

Processes = Callable[..., DemoProcess]


def client(*args: str) -> str:
    """Runs the demo client to completion and returns its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "lookaside", "routeguide", "client", *args],
        cwd=ROOT,
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def registered(balancer: BalancerHandle, pool: str) -> set[int]:
    snapshot = balancer.run(balancer.store.snapshot(pool))
    return {b.port for b in snapshot.backends} if snapshot else set()


def listed(balancer: BalancerHandle, pool: str, n: int) -> set[str]:
    """Waits (bounded) until the balancer lists n backends for the pool."""
    stream = LbStream(balancer.address, name=pool)
    try:
        while True:
            addresses = {a for a, _, drop in stream.next_list(timeout=20) if not drop}
            if len(addresses) == n:
                return addresses
    finally:
        stream.close()


def start_servers(
    processes: Processes, balancer: BalancerHandle, pool: str, n: int
) -> list[DemoServerProcess]:
    servers = [
        processes("server", "--balancer", balancer.address, "--pool", pool, "--grace", "30")
        for _ in range(n)
    ]
    assert all(isinstance(s, DemoServerProcess) for s in servers)
    assert registered(balancer, pool) == {s.port for s in servers}  # type: ignore[attr-defined]
    return servers  # type: ignore[return-value]


def test_calls_spread_through_lookaside_and_not_without_it(
    balancer: BalancerHandle, pool_name: str, processes: Processes
) -> None:
    servers = start_servers(processes, balancer, pool_name, 3)
    assert len({s.name for s in servers}) == 3
    assert listed(balancer, pool_name, 3) == {s.address for s in servers}

    out = client("--lb", "lookaside", "--balancer", balancer.address, "--target", pool_name,
                 "--mode", "repeatn", "-n", "30", "--quiet")  # fmt: skip
    assert parse_summary(out) == ({s.name: 10 for s in servers}, {}), out
    assert "(resp)" not in out  # --quiet

    out = client("--lb", "none", "--server", servers[0].address, "-n", "30", "--quiet")
    assert parse_summary(out) == ({servers[0].name: 30}, {}), out

    # The default target maps to its first DNS label: routeguide.lookaside.test -> pool.
    out = client("--lb", "lookaside", "--balancer", balancer.address, "--api", "RecordRoute",
                 "--target", f"{pool_name}.lookaside.test:50051", "-n", "6")  # fmt: skip
    # Six quick calls from a new client: all answered by the pool's servers,
    # round robin over those READY at each call (a sub-channel still
    # connecting when the first calls go out gets the later ones only).
    per_server, errors = parse_summary(out)
    assert errors == {} and sum(per_server.values()) == 6, out
    assert set(per_server) <= {s.name for s in servers} and len(per_server) >= 2, out
    assert out.count("[RecordRoute] (resp) (server=") == 6

    for s in servers:
        s.signal(signal.SIGTERM)
    for s in servers:
        assert s.wait(30) == 0, s.stderr()
    # Each one deregistered itself (its lease did not merely run out).
    assert registered(balancer, pool_name) == set()
    events = balancer.run(balancer.store.events(pool_name))
    deregistered = {e["backend"] for e in events if e["kind"] == "deregistered"}
    assert deregistered == {backend_id_for("127.0.0.1", s.port) for s in servers}
    assert not [e for e in events if e["kind"] == "expired"]
    assert all(s.proc.poll() is not None for s in servers)


def test_sigterm_leaves_the_pool_before_it_stops_serving(
    balancer: BalancerHandle, pool_name: str, processes: Processes
) -> None:
    (server,) = start_servers(processes, balancer, pool_name, 1)
    outbox: queue.Queue[rg.RouteNote | None] = queue.Queue()
    with grpc.insecure_channel(server.address) as channel:
        call = rg_grpc.RouteGuideStub(channel).RouteChat(iter(outbox.get, None), timeout=60)
        spot = rg.Point(latitude=7, longitude=7)
        outbox.put(rg.RouteNote(location=spot, message="before"))
        assert call.initial_metadata() == (("x-served-by", server.name),)
        server.signal(signal.SIGTERM)
        # The backend leaves the registry while the stream is still open...
        wait_until(lambda: registered(balancer, pool_name) == set(), timeout=20)
        assert server.proc.poll() is None
        # ... and the open stream is still served during the grace period.
        outbox.put(rg.RouteNote(location=spot, message="after"))
        assert next(call).message == "before"
        outbox.put(None)
        assert list(call) == []
        assert call.code() is grpc.StatusCode.OK
    assert server.wait(30) == 0, server.stderr()


def test_ctrl_c_ends_the_firehose_with_a_summary(
    balancer: BalancerHandle, pool_name: str, processes: Processes
) -> None:
    servers = start_servers(processes, balancer, pool_name, 2)
    listed(balancer, pool_name, 2)
    firehose = processes("client", "--lb", "lookaside", "--balancer", balancer.address,
                         "--target", pool_name, "--mode", "firehose")  # fmt: skip
    seen: set[str] = set()
    while len(seen) < 2:  # bounded: next_line raises after 20 s without output
        line = firehose.next_line()
        for s in servers:
            if f"(server={s.name})" in line:
                seen.add(s.name)
    firehose.signal(signal.SIGINT)
    assert firehose.wait(30) == 0, firehose.stderr()
    per_server, errors = parse_summary("\n".join(firehose.output))
    assert set(per_server) == {s.name for s in servers}
    assert errors == {}
    for s in servers:
        s.signal(signal.SIGTERM)
        assert s.wait(30) == 0, s.stderr()


def test_a_stop_signal_right_after_the_banner_stops_in_order(processes: Processes) -> None:
    """The handlers are in place before the server serves: SIGTERM or
    Ctrl-C sent the moment the banner appears ends the process cleanly
    (exit 0, no traceback), never killed by the default action."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
        server = processes("server", "--listen", "127.0.0.1:0")
        server.signal(sig)
        assert server.wait(30) == 0, server.stderr()
        assert "stopped server" in server.stderr()
        assert "Traceback" not in server.stderr()
