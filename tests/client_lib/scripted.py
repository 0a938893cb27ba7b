"""A scriptable BalanceLoad peer (a real gRPC server on 127.0.0.1:0 that the
test drives, as grpc-go's fake remote balancer in grpclb_test.go), and one
face over both thin clients, so each scenario runs for sync and asyncio."""

from __future__ import annotations

import concurrent.futures
import contextlib
import ipaddress
import queue
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from client_lib import LookasideChannel
from client_lib.aio import LookasideAioChannel
from lookaside_proto.lb.v1 import load_balancer_pb2 as lb
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from tests.support import LoopThread

_END = object()


class Stream:
    """One BalanceLoad stream the client opened: its requests in a queue,
    and what the test sends back."""

    def __init__(self, context: grpc.ServicerContext) -> None:
        self.context = context
        self.requests: queue.Queue[lb.LoadBalanceRequest] = queue.Queue()
        self.out: queue.Queue[Any] = queue.Queue()

    def initial(self, report_interval_s: int = 0) -> Stream:
        r = lb.LoadBalanceResponse()
        r.initial_response.client_stats_report_interval.FromSeconds(report_interval_s)
        self.out.put(r)
        return self

    def servers(self, *servers: lb.Server) -> Stream:
        r = lb.LoadBalanceResponse()
        r.server_list.servers.extend(servers)
        self.out.put(r)
        return self

    def fallback(self) -> Stream:
        self.out.put(lb.LoadBalanceResponse(fallback_response=lb.FallbackResponse()))
        return self

    def end(self, code: grpc.StatusCode = grpc.StatusCode.OK, details: str = "") -> None:
        self.out.put((_END, code, details))

    def first_request(self, timeout: float = 10.0) -> lb.LoadBalanceRequest:
        return self.requests.get(timeout=timeout)


def server(port: int, token: str = "", drop: bool = False, ip: bytes = b"\x7f\x00\x00\x01") -> Any:
    if drop:
        return lb.Server(load_balance_token=token, drop=True)
    return lb.Server(ip_address=ip, port=port, load_balance_token=token)


class ScriptedBalancer:
    def __init__(self, credentials: grpc.ServerCredentials | None = None, port: int = 0) -> None:
        self.streams: queue.Queue[Stream] = queue.Queue()
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=16))
        handler = grpc.stream_stream_rpc_method_handler(
            self._balance_load,
            request_deserializer=lb.LoadBalanceRequest.FromString,
            response_serializer=lb.LoadBalanceResponse.SerializeToString,
        )
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "grpc.lb.v1.LoadBalancer", {"BalanceLoad": handler}
                ),
            )
        )
        if credentials is None:
            self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        else:
            self.port = self.server.add_secure_port(f"127.0.0.1:{port}", credentials)
        self.address = f"127.0.0.1:{self.port}"
        self.server.start()

    def _balance_load(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        stream = Stream(context)

        def read() -> None:
            try:
                for request in request_iterator:
                    stream.requests.put(request)
            except grpc.RpcError:
                pass

        threading.Thread(target=read, daemon=True).start()
        self.streams.put(stream)
        while context.is_active():
            try:
                item = stream.out.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(item, tuple) and item[0] is _END:
                if item[1] is not grpc.StatusCode.OK:
                    context.abort(item[1], item[2])
                return
            yield item

    def next_stream(self, timeout: float = 10.0) -> Stream:
        return self.streams.get(timeout=timeout)

    def stop(self) -> None:
        self.server.stop(0).wait()


class Client:
    """A thin client of either kind behind one blocking face: `call()`
    returns the serving backend's name or the error's status code."""

    def __init__(self, kind: str, target: str, balancers: Any, **kw: Any) -> None:
        self.kind = kind
        self.loop: LoopThread | None = None
        if kind == "sync":
            self.channel: Any = LookasideChannel(target, balancers, **kw)
            self.stub = rg_grpc.RouteGuideStub(self.channel)
        else:
            self.loop = LoopThread("aio-client")

            async def make() -> Any:
                return LookasideAioChannel(target, balancers, **kw)

            self.channel = self.loop.run(make())
            self.stub = rg_grpc.RouteGuideStub(self.channel)

    def call(
        self, timeout: float = 5.0, wait_for_ready: bool | None = None
    ) -> str | grpc.StatusCode:
        if self.loop is None:
            try:
                return str(
                    self.stub.GetFeature(
                        rg.Point(), timeout=timeout, wait_for_ready=wait_for_ready
                    ).name
                )
            except grpc.RpcError as exc:
                self.last_details = exc.details()
                return exc.code()  # type: ignore[no-any-return]

        async def go() -> str | grpc.StatusCode:
            try:
                feature = await self.stub.GetFeature(
                    rg.Point(), timeout=timeout, wait_for_ready=wait_for_ready
                )
                return str(feature.name)
            except grpc.aio.AioRpcError as exc:
                self.last_details = exc.details()
                return exc.code()

        return self.loop.run(go(), timeout + 5)

    def call_stream(self, timeout: float = 5.0) -> list[str]:
        """A ListFeatures call: the names it streamed back."""
        if self.loop is None:
            return [f.name for f in self.stub.ListFeatures(rg.Rectangle(), timeout=timeout)]

        async def go() -> list[str]:
            return [f.name async for f in self.stub.ListFeatures(rg.Rectangle(), timeout=timeout)]

        return self.loop.run(go(), timeout + 5)

    def states(self) -> dict[str, grpc.ChannelConnectivity]:
        return dict(self.channel.backend_states())

    def ready(self) -> set[str]:
        return {a for a, s in self.states().items() if s is grpc.ChannelConnectivity.READY}

    def close(self) -> None:
        if self.loop is None:
            self.channel.close()
        elif not self.loop.loop.is_closed():
            self.loop.run(self.channel.close())
            self.loop.close()


def address_of(port: int) -> str:
    return f"{ipaddress.ip_address('127.0.0.1')}:{port}"


@contextlib.contextmanager
def demo_backends(
    balancer_address: str, pool: str, tmp_path: Path, n: int = 3
) -> Iterator[list[Any]]:
    """n demo server processes that register themselves in `pool` (started
    together, each ready once registered); killed at the end, even stopped."""
    from tests.demo.conftest import DemoServerProcess

    args = ["--listen", "127.0.0.1:0", "--balancer", balancer_address, "--pool", pool]
    procs = [
        DemoServerProcess([*args, "--name", f"d{i}"], tmp_path / f"d{i}.err") for i in range(n)
    ]
    try:
        yield [p.ready() for p in procs]
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGCONT)
            p.kill()


def client(clients: list[Client], kind: str, balancers: object, **kw: object) -> Client:
    """A Client for the target "svc.test:443", closed by the `clients` fixture."""
    c = Client(kind, "svc.test:443", balancers, **kw)
    clients.append(c)
    return c
