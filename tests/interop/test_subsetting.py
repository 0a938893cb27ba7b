"""Deterministic subsetting end to end, in the production profile (TLS,
a per-pool registration token, health checks and outlier detection on):
thin clients (sync and asyncio) and unmodified grpcio channels (grpclb
through the DNS responder) each call exactly `subset_size` backends, the
backends are shared out evenly, and a backend that leaves changes only the
lists of the clients that had it, each by that one member. With a subset
size past the serving backends, every client gets every one of them."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import pytest

from client_lib import LookasideChannel, Registration
from lookaside.certs import Issued, issue
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from lookaside_registry.model import PoolConfig
from tests.dns_responder.dns_handle import ZONE, DnsHandle
from tests.interop.helpers import GRPCLB_CONFIG, wait_dns_caught_up
from tests.interop.test_matrix import balancer_settings, client_credentials, server_credentials
from tests.support import BalancerHandle, RouteGuideBackend, wait_until

POOL = "subsets"
TOKEN = "subsets-pool-registration-token-0123456789"
BACKENDS = 6
SUBSET = 2
# A client's subset is what it called in this many calls in a row
# (round robin over its list: every member many times over).
SAMPLE = 24


@dataclass
class Client:
    """A client calling in a thread of its own; `seen` holds the backend of
    each call (or an error), newest last."""

    name: str
    call: Callable[[], str]
    seen: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        while not self.stop.is_set():
            what = self.call()
            with self.lock:
                self.seen.append(what)
            time.sleep(0.005)

    def mark(self) -> int:
        with self.lock:
            return len(self.seen)

    def since(self, mark: int) -> list[str]:
        with self.lock:
            return self.seen[mark:]

    def subset_after(self, mark: int, timeout: float = 20.0) -> set[str]:
        """The backends of the first SAMPLE calls after `mark`."""
        wait_until(lambda: len(self.since(mark)) >= SAMPLE, timeout=timeout)
        return set(self.since(mark)[:SAMPLE])


def unary(stub: rg_grpc.RouteGuideStub) -> Callable[[], str]:
    def call() -> str:
        try:
            return stub.GetFeature(rg.Point(latitude=1, longitude=2), timeout=5).name
        except grpc.RpcError as exc:
            return f"error:{exc.code().name}"

    return call


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Issued:
    return issue(tmp_path_factory.mktemp("certs"), zone=ZONE)


@dataclass
class Lab:
    balancer: BalancerHandle
    dns: DnsHandle
    backends: list[RouteGuideBackend]
    registrations: list[Registration]
    creds: grpc.ChannelCredentials | None


@pytest.fixture
def lab(redis_url: str, certs: Issued, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    policy = tmp_path_factory.mktemp("policy") / "policy.json"
    policy.write_text(json.dumps({"pools": {POOL: {"tokens": [TOKEN], "create": True}}}))
    settings = balancer_settings("tls", certs, policy)
    settings["replica_id"] = "subsets-tls"
    balancer = BalancerHandle(redis_url, **settings)
    backends: list[RouteGuideBackend] = []
    registrations: list[Registration] = []
    dns: DnsHandle | None = None
    try:
        config = PoolConfig.from_flat(
            POOL,
            report_interval_ms=1000,
            health_checks=True,
            health_interval_ms=500,
            health_timeout_ms=2000,
            outlier_detection=True,
            outlier_interval_ms=1000,
            subset_size=SUBSET,
        )
        balancer.run(balancer.store.put_pool(config))
        creds = client_credentials("tls", certs)
        for i in range(BACKENDS):
            backend = RouteGuideBackend(f"s{i}").start(server_credentials("tls", certs))
            backends.append(backend)
            registrations.append(
                Registration(
                    balancer.address, POOL, backend.port, host="127.0.0.1",
                    token=TOKEN, credentials=creds,
                ).start()
            )  # fmt: skip
        from balancer_server import metrics

        wait_until(
            lambda: metrics.HEALTH_PROBES.labels(POOL, "ok")._value.get() >= 2 * BACKENDS,
            timeout=30,
        )
        dns = DnsHandle(redis_url, balancers=balancer.address)
        yield Lab(balancer, dns, backends, registrations, creds)
    finally:
        for r in registrations:
            r.stop(drain=False)
        for b in backends:
            b.stop()
        if dns is not None:
            dns.stop()
        balancer.stop()


def thin_sync(lab: Lab, stack: list[Callable[[], None]]) -> Callable[[], str]:
    channel = LookasideChannel(
        POOL, lab.balancer.address, credentials=lab.creds, balancer_credentials=lab.creds
    )
    stack.append(channel.close)
    grpc.channel_ready_future(channel).result(timeout=20)
    return unary(rg_grpc.RouteGuideStub(channel))


def thin_aio(lab: Lab, stack: list[Callable[[], None]]) -> Callable[[], str]:
    """The asyncio channel on a loop of its own; calls are run there."""
    from client_lib.aio import LookasideChannel as AioChannel

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_loop(coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    async def open_channel() -> AioChannel:
        channel = AioChannel(
            POOL, lab.balancer.address, credentials=lab.creds, balancer_credentials=lab.creds
        )
        await asyncio.wait_for(channel.channel_ready(), 20)
        return channel

    channel = on_loop(open_channel())
    stub = rg_grpc.RouteGuideStub(channel)

    def close() -> None:
        on_loop(channel.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    stack.append(close)

    async def one() -> str:
        try:
            return (await stub.GetFeature(rg.Point(latitude=1, longitude=2), timeout=5)).name
        except grpc.aio.AioRpcError as exc:
            return f"error:{exc.code().name}"

    return lambda: on_loop(one())


def stock(lab: Lab, stack: list[Callable[[], None]]) -> Callable[[], str]:
    """An unmodified grpcio channel: grpclb through the DNS responder's SRV
    records, over TLS."""
    wait_dns_caught_up(lab.dns, POOL)
    target = f"dns://127.0.0.1:{lab.dns.port}/{POOL}.{ZONE}:{lab.backends[0].port}"
    options = [
        ("grpc.dns_enable_srv_queries", 1),
        ("grpc.service_config", GRPCLB_CONFIG),
        ("grpc.grpclb_fallback_timeout_ms", 30_000),
    ]
    assert lab.creds is not None
    channel = grpc.secure_channel(target, lab.creds, options=options)
    stack.append(channel.close)
    grpc.channel_ready_future(channel).result(timeout=20)
    return unary(rg_grpc.RouteGuideStub(channel))


KINDS = {"thin-sync": thin_sync, "thin-aio": thin_aio, "grpcio": stock}


@pytest.mark.timeout(120)
def test_each_client_gets_its_subset_and_a_departure_moves_only_its_clients(lab: Lab) -> None:
    from balancer_server import metrics

    plan = ["thin-sync", "thin-sync", "thin-aio", "grpcio", "grpcio", "grpcio"]
    stack: list[Callable[[], None]] = []
    clients: list[Client] = []
    threads: list[threading.Thread] = []
    try:
        for i, kind in enumerate(plan):
            client = Client(f"{kind}-{i}", KINDS[kind](lab, stack))
            clients.append(client)
            thread = threading.Thread(target=client.run, daemon=True)
            thread.start()
            threads.append(thread)
        marks = {c.name: c.mark() for c in clients}
        before = {c.name: c.subset_after(marks[c.name]) for c in clients}
        print("subsets:", before)
        names = {b.name for b in lab.backends}
        for c in clients:
            # Exactly subset_size backends each, every call answered.
            assert len(before[c.name]) == SUBSET and before[c.name] <= names, (c.name, before)
        # Six clients x two of six backends: every backend is in two subsets.
        held = Counter(b for s in before.values() for b in s)
        assert sorted(held.values()) == [2] * BACKENDS, held
        feed = lab.balancer.server.hub.feeds[POOL]
        assert feed.subsets is not None and len(feed.subsets.table) == len(plan)

        # The backend of the first client's subset leaves.
        gone = sorted(before[clients[0].name])[0]
        index = [b.name for b in lab.backends].index(gone)
        had = {c.name for c in clients if gone in before[c.name]}
        sent = metrics.LISTS_SENT.labels(POOL)
        lists_before = sent._value.get()
        lab.registrations[index].stop(drain=False)
        wait_until(lambda: sent._value.get() >= lists_before + len(had), timeout=20)
        # Calls already on their way when a new list arrived may still go
        # to the backend that left (it keeps serving): sample from when
        # every client has stopped calling it.
        wait_until(lambda: all(gone not in c.since(c.mark() - 6) for c in clients), timeout=20)
        marks = {c.name: c.mark() for c in clients}
        after = {c.name: c.subset_after(marks[c.name]) for c in clients}
        print("after", gone, "left:", after)
        for c in clients:
            old, new = before[c.name], after[c.name]
            assert len(new) == SUBSET and gone not in new, (c.name, after)
            if c.name in had:
                assert old - new == {gone} and len(new - old) == 1, (c.name, old, new)
            else:
                assert new == old, (c.name, old, new)
        # Only the clients that had it were sent a list, one each.
        time.sleep(0.5)
        assert sent._value.get() - lists_before == len(had)

        # A subset size past the serving backends: every client gets all of
        # them, as without subsetting.
        config = lab.balancer.run(lab.balancer.store.get_pool(POOL))
        lab.balancer.run(lab.balancer.store.put_pool(config.updated(subset_size=BACKENDS)))
        serving = names - {gone}
        seen: dict[str, set[str]] = {}

        def everyone_calls_every_serving_backend() -> bool:
            for c in clients:
                seen[c.name] = set(c.since(c.mark() - SAMPLE))
            return all(s == serving for s in seen.values())

        try:
            wait_until(everyone_calls_every_serving_backend)
        except AssertionError:
            streams = [
                (
                    sub.subset,
                    getattr(sub, "sent", None) is feed.payload_for(sub.subset),
                    getattr(sub, "writing", None) is not None,
                )
                for sub in list(feed.subscribers)
            ]
            raise AssertionError(
                f"serving {serving}; called {seen}; streams (subset, sent the current list, "
                f"writing) {streams}"
            ) from None
        errors = [w for c in clients for w in c.seen if w.startswith("error:")]
        assert not errors, Counter(errors)
    finally:
        for c in clients:
            c.stop.set()
        for t in threads:
            t.join(10)
        for close in reversed(stack):
            close()
