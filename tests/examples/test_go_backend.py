"""The Go backend of docs/backends.md (examples/go-backend), built offline
from Debian's Go packages with stock grpc-go and stubs generated from
protos/, against a real balancer (registration token required, health
checks every 100 ms) and a real Redis: it registers with the token, keeps
its lease with heartbeats, passes the health checks, is listed, answers the
thin client's calls, and on SIGTERM drains, deregisters and exits 0.

Needs go, protoc, protoc-gen-go and protoc-gen-go-grpc (`make go-toolchain`
installs them); without them it skips, or fails under LOOKASIDE_STRICT=1."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from balancer_server.metrics import REGISTRY
from client_lib import LookasideChannel
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from lookaside_registry import keys
from lookaside_registry.model import PoolConfig
from tests.support import BalancerHandle, LbStream, require, require_tool, wait_until

ROOT = Path(__file__).resolve().parents[2]
GOCODE = Path("/usr/share/gocode")
LIFECYCLE = {"registered", "draining", "deregistered", "expired"}
TOKEN = "go-backend-test-token"


def build_go(name: str, out: Path) -> Path:
    """Builds examples/<name> with examples/build-go.sh (skips, or fails
    under LOOKASIDE_STRICT=1, without the Go toolchain)."""
    for tool in ("go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc"):
        require_tool(tool)
    require(
        (GOCODE / "src/google.golang.org/grpc/health").is_dir(),
        f"grpc-go not in {GOCODE} (Debian's golang-google-grpc-dev)",
    )
    build = subprocess.run(
        [str(ROOT / "examples" / "build-go.sh"), name, str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return out


@pytest.fixture(scope="module")
def go_backend(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_go("go-backend", tmp_path_factory.mktemp("go") / "go-backend")


@pytest.fixture
def guarded(redis_url: str, pool_name: str) -> Iterator[BalancerHandle]:
    """A balancer that wants the registration token and probes health."""
    handle = BalancerHandle(
        redis_url,
        insecure_registration=False,
        registration_token=TOKEN,
        health_checks=True,
        replica_id="solo",
    )
    handle.run(
        handle.store.put_pool(
            PoolConfig.from_flat(pool_name, health_interval_ms=100, health_timeout_ms=500)
        )
    )
    yield handle
    handle.stop()


class GoProcess:
    """The Go backend, stdout read line by line into a queue."""

    def __init__(self, binary: Path, *args: str, token: str) -> None:
        self.proc = subprocess.Popen(
            [str(binary), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={"LOOKASIDE_REGISTRATION_TOKEN": token, "PATH": "/usr/bin:/bin"},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def banner(self) -> dict[str, str]:
        line = self.lines.get(timeout=60)
        assert line and line.startswith("go-backend serving "), (line, self.finish())
        return dict(field.split("=", 1) for field in line.split()[2:])

    def finish(self, timeout: float = 60) -> str:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.communicate()
        return err


def probes_ok(pool: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "lookaside_balancer_health_probes_total", {"pool": pool, "result": "ok"}
        )
        or 0.0
    )


def test_go_backend_registers_serves_health_gets_calls_and_leaves_on_sigterm(
    go_backend: Path, guarded: BalancerHandle, pool_name: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    before = probes_ok(pool_name)
    go = GoProcess(
        go_backend, "-balancer", guarded.address, "-pool", pool_name,
        "-lease-ttl", "1s", "-drain-delay", "1s", token=TOKEN,
    )  # fmt: skip
    try:
        fields = go.banner()
        port, backend_id = int(fields["port"]), fields["backend"]

        def stored() -> dict | None:  # type: ignore[type-arg]
            raw = redis_client.hget(keys.backends(pool_name), backend_id)
            return json.loads(raw) if raw else None

        first = stored()
        assert first is not None and first["port"] == port and first["lease_ttl_ms"] == 1000
        # Heartbeats every third of the 1 s lease keep it alive.
        wait_until(lambda: (stored() or {}).get("last_heard_ms", 0) > first["last_heard_ms"])
        # It serves grpc.health.v1: the balancer's probes pass and it stays listed.
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        wait_until(lambda: probes_ok(pool_name) >= before + 5, timeout=30)
        assert (stored() or {}).get("state") == "serving"
        stream = LbStream(guarded.address, pool_name)
        try:
            assert [addr for addr, _, _ in stream.next_list()] == [f"127.0.0.1:{port}"]
        finally:
            stream.close()
        # The thin client's calls reach it.
        with LookasideChannel(pool_name, guarded.address) as lookaside:
            stub = rg_grpc.RouteGuideStub(lookaside)
            names = {stub.GetFeature(rg.Point(), timeout=10).name for _ in range(5)}
        assert names == {fields["name"]}

        go.proc.send_signal(signal.SIGTERM)
        err = go.finish()
    finally:
        if go.proc.poll() is None:
            go.proc.kill()
    assert go.proc.returncode == 0, err
    assert stored() is None
    events = guarded.run(guarded.store.events(pool_name))[::-1]
    # Drained (out of the lists, lease kept), then deregistered after the
    # 1 s drain delay, never expired.
    kinds = [e["kind"] for e in events if e["kind"] in LIFECYCLE]
    assert kinds == ["registered", "draining", "deregistered"], events
    steps = {e["kind"]: e["ts_ms"] for e in events}
    assert steps["deregistered"] - steps["draining"] >= 950, events


def test_go_backend_with_a_wrong_token_says_so_and_exits_1(
    go_backend: Path, guarded: BalancerHandle, pool_name: str
) -> None:
    go = GoProcess(go_backend, "-balancer", guarded.address, "-pool", pool_name, token="wrong")
    err = go.finish()
    assert go.proc.returncode == 1, err
    assert f'registration in pool "{pool_name}" refused: ' in err
    assert "Traceback" not in err and "panic" not in err
