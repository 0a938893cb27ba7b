"""`lookaside balancer --workers 2` as real processes: a supervisor and two
workers on one port (port 0: the supervisor picks it), in the production
profile (TLS, a pool's own registration token, health checks over TLS to
the backends, outlier detection), against a real redis-server, with stock
grpcio clients and the thin client as peers.

The tests share one supervisor and run in order: both workers serve; a
SIGKILLed worker is started again while a thin client keeps calling; SIGTERM
stops every worker within the grace period."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from balancer_server.workers import STOP_MARGIN
from client_lib import LookasideChannel, Registration
from lookaside.certs import Issued, issue
from lookaside.redis_process import free_port
from lookaside_proto.lb.v1 import load_balancer_pb2 as lb
from lookaside_proto.lb.v1 import load_balancer_pb2_grpc as lb_grpc
from lookaside_proto.registry.v1 import registry_pb2, registry_pb2_grpc
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from lookaside_registry import keys
from lookaside_registry.model import PoolConfig
from lookaside_registry.store import RegistryStore
from tests.support import RouteGuideBackend, wait_until

WORKERS = 2
GRACE = 2.0
TOKEN = "workers-pool-registration-token-0123456789"


@dataclass
class Supervised:
    proc: subprocess.Popen[str]
    address: str
    metrics: str
    replica: str
    pool: str
    certs: Issued
    redis: redis.Redis
    log: list[str] = field(default_factory=list)

    def creds(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.certs.ca.read_bytes())

    def channel(self) -> grpc.Channel:
        """A channel with a connection of its own (not shared with other
        channels to the same address), so the kernel may hand it to either
        worker."""
        return grpc.secure_channel(
            self.address, self.creds(), options=[("grpc.use_local_subchannel_pool", 1)]
        )

    def workers(self) -> dict[int, int]:
        """Worker index -> pid of the supervisor's children now."""
        out = {}
        for child in psutil.Process(self.proc.pid).children():
            try:
                cmd = child.cmdline()
            except psutil.NoSuchProcess:  # one that just died
                continue
            if "balancer_server.workers" in cmd:
                out[int(cmd[cmd.index("--index") + 1])] = child.pid
        return out

    def metric(self, name: str, **labels: str) -> dict[str, float]:
        """worker -> value of the samples of `name` with `labels` (and a worker)."""
        context = ssl.create_default_context(cafile=str(self.certs.ca))
        with urllib.request.urlopen(
            f"https://{self.metrics}/metrics", timeout=10, context=context
        ) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name != name:
                    continue
                rest = {k: v for k, v in s.labels.items() if k != "worker"}
                if rest == labels:
                    out[s.labels.get("worker", "")] = s.value
        return out


def _pool(name: str, health: bool) -> PoolConfig:
    return PoolConfig.from_flat(
        name,
        report_interval_ms=1000,
        health_checks=health,
        health_interval_ms=500,
        health_timeout_ms=2000,
        outlier_detection=True,
        outlier_interval_ms=1000,
    )


def _start(
    redis_url: str, certs: Issued, policy: Path, replica: str, metrics: str, grace: float = GRACE
) -> tuple[subprocess.Popen[str], str, list[str]]:
    """`lookaside balancer --workers 2` on port 0 in the production profile;
    returns once every worker serves: the process, its address, its log
    lines so far (and to come)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lookaside", "balancer", "--workers", str(WORKERS),
         "--listen", "127.0.0.1:0", "--redis-url", redis_url, "--metrics-listen", metrics,
         "--replica-id", replica, "--grace", str(grace), "--registration-policy", str(policy),
         "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
         "--backend-tls-ca", str(certs.ca)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    log: list[str] = []
    listening = threading.Event()
    address: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            found = re.search(r"balancer listening on (\S+) with \d+ workers", line)
            if found:
                address.append(found.group(1))
                listening.set()

    threading.Thread(target=read, daemon=True).start()
    if not listening.wait(60):
        proc.kill()
        proc.wait(10)
        raise AssertionError("".join(log))
    return proc, address[0], log


@pytest.fixture(scope="module")
def supervised(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervised]:
    tmp = tmp_path_factory.mktemp("workers")
    certs = issue(tmp / "certs")
    pool = f"workers-{uuid.uuid4().hex[:8]}"
    policy = tmp / "policy.json"
    policy.write_text(
        json.dumps({"pools": {p: {"tokens": [TOKEN]} for p in (pool, f"{pool}-reg")}})
    )

    async def configure() -> None:
        store = RegistryStore.from_url(redis_url)
        await store.put_pool(_pool(pool, health=True))
        await store.put_pool(_pool(f"{pool}-reg", health=False))
        await store.close()

    asyncio.run(configure())
    replica = f"wk-{uuid.uuid4().hex[:6]}"
    metrics = f"127.0.0.1:{free_port()}"
    proc, address, log = _start(redis_url, certs, policy, replica, metrics)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield Supervised(proc, address, metrics, replica, pool, certs, client, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        client.close()


@pytest.fixture(scope="module")
def registered(supervised: Supervised) -> Iterator[list[RouteGuideBackend]]:
    """Three TLS backends in the pool, each registered (with the pool's
    token) and heartbeating through the supervised port."""
    certs = supervised.certs
    server_creds = grpc.ssl_server_credentials(
        [(certs.server_key.read_bytes(), certs.server_cert.read_bytes())]
    )
    backends = [RouteGuideBackend(f"w-{i}").start(server_creds) for i in range(3)]
    registrations = [
        Registration(
            supervised.address, supervised.pool, b.port, host="127.0.0.1", token=TOKEN,
            credentials=supervised.creds(),
        ).start()
        for b in backends
    ]  # fmt: skip
    try:
        yield backends
    finally:
        for r in registrations:
            r.stop(drain=False)
        for b in backends:
            b.stop()


def _healthy_list(s: Supervised, channel: grpc.Channel) -> tuple[grpc.Future, list[str]]:
    """A stock grpcio BalanceLoad stream on `channel` and its first list
    with the three backends."""
    requests = iter([lb.LoadBalanceRequest(initial_request={"name": s.pool})])
    call = lb_grpc.LoadBalancerStub(channel).BalanceLoad(
        _then_wait(requests), timeout=60
    )  # fmt: skip
    for response in call:
        if response.HasField("server_list"):
            servers = [x for x in response.server_list.servers if not x.drop]
            if len({(x.ip_address, x.port) for x in servers}) == 3:
                return call, [x.load_balance_token for x in servers]
    raise AssertionError("the stream ended before a list with every backend")


def _then_wait(first: Iterator[lb.LoadBalanceRequest]) -> Iterator[lb.LoadBalanceRequest]:
    yield from first
    threading.Event().wait(120)  # keep the stream open until cancelled


def test_both_workers_serve_balance_load_and_register_on_one_port(
    supervised: Supervised, registered: list[RouteGuideBackend]
) -> None:
    s = supervised
    assert set(s.workers()) == set(range(WORKERS))
    # Registrations: each on a connection of its own, until both workers
    # have taken some (the kernel picks the worker per connection).
    registry = f"{s.pool}-reg"
    for port in range(1, 41):
        with s.channel() as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)
            reply = stub.Register(
                registry_pb2.RegisterRequest(pool=registry, host="127.0.0.1", port=20000 + port),
                metadata=(("authorization", f"Bearer {TOKEN}"),),
                timeout=30,
            )
            assert reply.backend_id
        done = s.metric("lookaside_balancer_registrations_total", method="Register", code="OK")
        if len([w for w, n in done.items() if n > 0]) == WORKERS:
            break
    else:
        pytest.fail(f"40 registrations on fresh connections all reached one worker: {done}")
    assert s.redis.hlen(keys.backends(registry)) == port
    # Streams: likewise, each gets the pool's list of three healthy backends
    # from whichever worker took it.
    calls, channels = [], []
    try:
        for _ in range(40):
            channel = s.channel()
            channels.append(channel)
            call, tokens = _healthy_list(s, channel)
            calls.append(call)
            assert len(tokens) >= 3
            open_ = s.metric("lookaside_balancer_streams_open", pool=s.pool)
            if len([w for w, n in open_.items() if n > 0]) == WORKERS:
                break
        else:
            pytest.fail(f"40 streams on fresh connections all reached one worker: {open_}")
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            channel.close()
    # The replica set lists every worker, each under the replica id.
    live = s.redis.hgetall(keys.REPLICAS)
    assert {f"{s.replica}-w{i}" for i in range(WORKERS)} <= set(live)
    assert s.metric("lookaside_balancer_workers") == {"": WORKERS}


def test_a_killed_worker_is_started_again_and_clients_keep_their_lists(
    supervised: Supervised, registered: list[RouteGuideBackend]
) -> None:
    s = supervised
    wait_until(lambda: not any(s.metric("lookaside_balancer_streams_open", pool=s.pool).values()))
    channel = LookasideChannel(
        s.pool, s.address, credentials=s.creds(), balancer_credentials=s.creds()
    )
    stub = rg_grpc.RouteGuideStub(channel)
    results: list[str] = []
    stop = threading.Event()

    def calls() -> None:
        while not stop.is_set():
            try:
                stub.GetFeature(rg.Point(latitude=1, longitude=2), timeout=5)
                results.append("ok")
            except grpc.RpcError as exc:
                results.append(exc.code().name)
            time.sleep(0.005)

    caller = threading.Thread(target=calls)
    try:
        # The thin client's balancer stream, on one of the workers: kill that one.
        stub.GetFeature(rg.Point(), timeout=30, wait_for_ready=True)
        wait_until(
            lambda: sum(s.metric("lookaside_balancer_streams_open", pool=s.pool).values()) > 0
        )
        holder = next(
            int(w) for w, n in s.metric("lookaside_balancer_streams_open", pool=s.pool).items() if n
        )
        before = s.workers()
        caller.start()
        wait_until(lambda: len(results) >= 20)
        psutil.Process(before[holder]).send_signal(signal.SIGKILL)
        # Started again in its slot, under the same replica id, and the thin
        # client's stream is back (on whichever worker took it).
        wait_until(lambda: s.workers().get(holder, before[holder]) != before[holder], timeout=60)
        wait_until(lambda: s.metric("lookaside_balancer_workers") == {"": WORKERS}, timeout=60)
        wait_until(
            lambda: sum(s.metric("lookaside_balancer_streams_open", pool=s.pool).values()) == 1,
            timeout=60,
        )
        calls_after = len(results)
        wait_until(lambda: len(results) >= calls_after + 20)
    finally:
        stop.set()
        if caller.is_alive():
            caller.join(10)
        channel.close()
    assert s.metric("lookaside_balancer_worker_restarts_total") == {"": 1.0}
    assert "".join(s.log).count(f"worker {holder} (pid {before[holder]}") == 1
    failed = [r for r in results if r != "ok"]
    assert not failed, f"{len(failed)} of {len(results)} calls failed: {set(failed)}"
    live = s.redis.hgetall(keys.REPLICAS)
    assert {f"{s.replica}-w{i}" for i in range(WORKERS)} <= set(live)


def test_a_second_balancer_on_the_workers_port_fails_loudly(
    supervised: Supervised, redis_url: str
) -> None:
    """The workers share their port with each other only: a second
    balancer given it, with workers or without, exits 1 saying so."""
    for workers in ("2", "1"):
        done = subprocess.run(
            [sys.executable, "-m", "lookaside", "balancer", "--workers", workers,
             "--listen", supervised.address, "--redis-url", redis_url, "--metrics-listen", "",
             "--insecure-registration"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 1, done
        assert f"cannot listen on {supervised.address}: the address is in use" in done.stderr
    assert set(supervised.workers()) == set(range(WORKERS))


def test_sigterm_drains_and_stops_every_worker_within_the_grace_period(
    supervised: Supervised, registered: list[RouteGuideBackend]
) -> None:
    s = supervised
    workers = s.workers()
    assert len(workers) == WORKERS
    # A stream open while it stops: drained (ended by its worker), not cut.
    channel = s.channel()
    call, _ = _healthy_list(s, channel)
    started = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    code = s.proc.wait(GRACE + STOP_MARGIN + 30)
    took = time.monotonic() - started
    call.cancel()
    channel.close()
    assert code == 0, "".join(s.log)
    assert took < GRACE + STOP_MARGIN + 5, took
    assert not any(psutil.pid_exists(pid) for pid in workers.values())
    assert "every worker stopped cleanly" in "".join(s.log)
    # Each worker left the replica set on its way out.
    live = s.redis.hgetall(keys.REPLICAS)
    assert not {f"{s.replica}-w{i}" for i in range(WORKERS)} & set(live)


def test_workers_stop_when_their_supervisor_is_killed(
    redis_url: str, supervised: Supervised, tmp_path: Path
) -> None:
    """No worker outlives its supervisor, even a SIGKILLed one: the port
    is free again."""
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"pools": {}}))
    proc, address, log = _start(redis_url, supervised.certs, policy, "wk-orphans", "")
    workers = [c.pid for c in psutil.Process(proc.pid).children()]
    assert len(workers) == WORKERS
    proc.kill()
    proc.wait(10)

    def gone(pid: int) -> bool:  # an orphan's zombie counts as gone
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(lambda: all(gone(pid) for pid in workers), timeout=GRACE + STOP_MARGIN + 20)
    assert "the supervisor is gone; stopping" in "".join(log)
    port = int(address.rpartition(":")[2])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # no listener left on it


def test_a_worker_that_does_not_stop_is_killed_and_the_exit_status_says_so(
    redis_url: str, supervised: Supervised, tmp_path: Path
) -> None:
    """A worker that cannot act on SIGTERM (stopped here with SIGSTOP) is
    killed after the grace period and its margin; the supervisor's exit
    status is then 1, and the other worker still stopped cleanly."""
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"pools": {}}))
    grace = 0.5
    proc, _, log = _start(redis_url, supervised.certs, policy, "wk-stuck", "", grace)
    stuck, other = (c.pid for c in psutil.Process(proc.pid).children())
    os.kill(stuck, signal.SIGSTOP)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(grace + STOP_MARGIN + 30)
    took = time.monotonic() - started
    assert code == 1, "".join(log)
    assert grace + STOP_MARGIN <= took < grace + STOP_MARGIN + 10, took
    text = "".join(log)
    assert f"worker pid {stuck} did not stop within" in text
    assert "killed 1 of 2 workers" in text and "0 exited with an error" in text
    assert not psutil.pid_exists(stuck) and not psutil.pid_exists(other)


def test_bad_worker_counts_exit_2_with_one_line(tmp_path: Path) -> None:
    for value, message in (("0", "0 workers cannot serve"), ("-3", "-3 workers cannot serve"),
                           ("100000", "more than the 256 allowed"), ("two", "valid integer")):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "lookaside", "balancer", "--workers", value],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "--workers" in lines[0] and message in lines[0], done.stderr
