"""Registration and AsyncRegistration: the credential on every call, a first
registration that waits for its balancer, and the demo server doing so."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from client_lib import AsyncRegistration, Registration, RegistrationRefused
from lookaside_proto.registry.v1 import registry_pb2 as pb
from lookaside_proto.registry.v1 import registry_pb2_grpc as pb_grpc
from lookaside_registry import keys
from tests.demo.conftest import DemoServerProcess
from tests.support import BalancerHandle, LoopThread, wait_until


class RecordingRegistry(pb_grpc.RegistryServicer):
    """A real Registry server that grants every lease and records, per
    method, the authorization metadata each call carried."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_RegistryServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"
        self.server.start()

    def _see(self, method: str, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.seen.append((method, dict(context.invocation_metadata()).get("authorization", "")))

    def Register(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        self._see("Register", context)
        r = pb.RegisterResponse(backend_id="b1", lease_id="l1", address=f"127.0.0.1:{request.port}")
        r.heartbeat_interval.FromMilliseconds(100)
        return r

    def Heartbeat(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        self._see("Heartbeat", context)
        return pb.HeartbeatResponse()

    def Drain(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        self._see("Drain", context)
        return pb.DrainResponse()

    def Deregister(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        self._see("Deregister", context)
        return pb.DeregisterResponse()

    def methods(self) -> set[str]:
        with self.lock:
            return {m for m, _ in self.seen}


@pytest.fixture
def registry() -> Iterator[RecordingRegistry]:
    r = RecordingRegistry()
    yield r
    r.server.stop(0).wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sync_registration_sends_the_token_on_every_call(registry: RecordingRegistry) -> None:
    reg = Registration(registry.address, "p", 1234, token="s3cret", drain_delay=0)
    reg.start()
    wait_until(lambda: "Heartbeat" in registry.methods())
    reg.stop()
    assert registry.methods() == {"Register", "Heartbeat", "Drain", "Deregister"}
    assert {auth for _, auth in registry.seen} == {"Bearer s3cret"}


def test_aio_registration_sends_the_token_on_every_call(registry: RecordingRegistry) -> None:
    loop = LoopThread("aio-reg")

    async def run() -> None:
        reg = AsyncRegistration(registry.address, "p", 1234, token="s3cret", drain_delay=0)
        await reg.start()
        while "Heartbeat" not in registry.methods():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        await reg.stop()

    try:
        loop.run(run(), 20)
    finally:
        loop.close()
    assert registry.methods() == {"Register", "Heartbeat", "Drain", "Deregister"}
    assert {auth for _, auth in registry.seen} == {"Bearer s3cret"}


def test_no_token_sends_no_authorization(registry: RecordingRegistry) -> None:
    Registration(registry.address, "p", 1234, drain_delay=0).start().stop()
    assert {auth for _, auth in registry.seen} == {""}


def test_first_registration_waits_for_a_balancer_until_stopped() -> None:
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    reg = Registration(dead, "p", 1234)
    done = threading.Event()
    threading.Thread(target=lambda: (reg.start(), done.set()), daemon=True).start()
    # Both addresses fail in a row (no wait between them), then a backoff
    # step; it keeps going until stop().
    wait_until(lambda: reg.keeper.backoff._current > 0, timeout=10)
    assert not done.is_set() and not reg.lease_id
    reg.stop(drain=False)
    assert done.wait(10)
    assert not reg.lease_id


def test_a_refusal_retrying_cannot_fix_raises(balancer: BalancerHandle, pool_name: str) -> None:
    with pytest.raises(RegistrationRefused) as info:
        Registration(balancer.address, pool_name, 70000).start()
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "port 70000 is out of range" in info.value.details()


def test_demo_server_started_before_its_balancer_registers_when_it_comes_up(
    redis_url: str,
    pool_name: str,
    redis_client,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    port = free_port()
    server = DemoServerProcess(
        ["--listen", "127.0.0.1:0", "--balancer", f"127.0.0.1:{port}", "--pool", pool_name],
        tmp_path / "server.err",
    )
    balancer: BalancerHandle | None = None
    try:
        # It keeps trying (and says so, once per step) while no balancer is up.
        wait_until(lambda: "registration via" in server.stderr(), timeout=20)
        assert server.proc.poll() is None
        balancer = BalancerHandle(redis_url, listen=f"127.0.0.1:{port}")
        server.ready()  # the banner comes once it is registered
        wait_until(lambda: len(redis_client.hgetall(keys.backends(pool_name))) == 1, timeout=20)
    finally:
        server.kill()
        if balancer is not None:
            balancer.stop()


def test_demo_server_sends_its_token_file(registry: RecordingRegistry, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    server = DemoServerProcess(
        ["--listen", "127.0.0.1:0", "--balancer", registry.address, "--pool", "p",
         "--registration-token-file", str(token_file)],
        tmp_path / "server.err",
    )  # fmt: skip
    try:
        server.ready()
        wait_until(lambda: "Register" in registry.methods())
    finally:
        server.kill()
    assert ("Register", "Bearer from-a-file") in registry.seen
