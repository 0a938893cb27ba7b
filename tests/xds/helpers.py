"""Stock grpcio xDS clients for tests, each in a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def bootstrap(
    address: str,
    node_id: str = "test-node",
    channel_creds: list[dict[str, Any]] | None = None,
    call_creds: list[dict[str, Any]] | None = None,
) -> str:
    """A bootstrap naming the balancer as the xDS server."""
    server: dict[str, Any] = {
        "server_uri": address,
        "channel_creds": channel_creds or [{"type": "insecure"}],
        "server_features": ["xds_v3"],
    }
    if call_creds:
        server["call_creds"] = call_creds
    return json.dumps(
        {"xds_servers": [server], "node": {"id": node_id, "locality": {"region": "local"}}}
    )


class XdsClient:
    """tests/xds/xds_client.py on `xds:///POOL`, bootstrap given through
    GRPC_XDS_BOOTSTRAP_CONFIG; `xds_creds`: the channel has xDS credentials
    (TLS to the backends when the Cluster says so)."""

    def __init__(
        self,
        pool: str,
        config: str,
        env: dict[str, str] | None = None,
        xds_creds: bool = False,
    ) -> None:
        environ = dict(os.environ)
        environ.pop("GRPC_XDS_BOOTSTRAP", None)
        environ["GRPC_XDS_BOOTSTRAP_CONFIG"] = config
        environ["PYTHONPATH"] = f"{ROOT}{os.pathsep}{environ.get('PYTHONPATH', '')}"
        environ.update(env or {})
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.xds.xds_client",
                f"xds:///{pool}",
                *(["--xds-creds"] if xds_creds else []),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=environ,
        )
        self.stderr: list[str] = []
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()
        self._ask_raw(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def _ask_raw(self, command: dict[str, Any] | None) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if command is not None:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"xDS client exited: {''.join(self.stderr)[-2000:]}")
        return json.loads(line)  # type: ignore[no-any-return]

    def calls(self, n: int, timeout: float = 5.0) -> Counter[str]:
        """n calls, one after another: backend name (or error:CODE) -> count."""
        return Counter(self._ask_raw({"op": "calls", "n": n, "timeout": timeout})["seen"])

    def first_error(self, n: int = 1, timeout: float = 5.0) -> tuple[Counter[str], str]:
        out = self._ask_raw({"op": "error", "n": n, "timeout": timeout})
        return Counter(out["seen"]), out["details"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(10)


STOP = object()


class AdsRaw:
    """A raw ADS stream from a stock grpcio stub, for the protocol itself:
    requests are sent as given, responses read into a queue by a thread."""

    def __init__(self, address: str, node_id: str = "raw-node") -> None:
        import queue

        import grpc
        from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

        self.pb = discovery_pb2
        self.node_id = node_id
        self.channel = grpc.insecure_channel(address)
        self.requests: queue.Queue[Any] = queue.Queue()
        self.responses: queue.Queue[Any] = queue.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self.call = stub.StreamAggregatedResources(iter(self.requests.get, STOP))
        self.error: Any = None
        self._first = True
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        import grpc

        try:
            for response in self.call:
                self.responses.put(response)
        except grpc.RpcError as exc:
            self.error = exc
        self.responses.put(STOP)

    def request(
        self,
        type_url: str,
        names: list[str],
        version: str = "",
        nonce: str = "",
        error: str = "",
    ) -> None:
        request = self.pb.DiscoveryRequest(
            type_url=type_url, resource_names=names, version_info=version, response_nonce=nonce
        )
        if self._first:
            request.node.id = self.node_id
            self._first = False
        if error:
            request.error_detail.code = 3
            request.error_detail.message = error
        self.requests.put(request)

    def next(self, timeout: float = 10.0) -> Any:
        item = self.responses.get(timeout=timeout)
        if item is STOP:
            self.responses.put(STOP)
            if self.error is not None:
                raise self.error
            raise EOFError("stream ended")
        return item

    def quiet(self, seconds: float) -> bool:
        """Whether nothing arrives for `seconds`."""
        import queue

        try:
            item = self.responses.get(timeout=seconds)
        except queue.Empty:
            return True
        self.responses.put(item)
        return False

    def ack(self, response: Any, names: list[str]) -> None:
        """Accepts `response` (its version and nonce) for `names`."""
        self.request(response.type_url, names, response.version_info, response.nonce)

    def close(self) -> None:
        self.requests.put(STOP)
        self.call.cancel()
        self.channel.close()


def unpack(type_url: str, resource: Any) -> Any:
    """A response's resource (an Any) as its message."""
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2
    from envoy.config.listener.v3 import listener_pb2
    from envoy.config.route.v3 import route_pb2

    cls = {
        "Listener": listener_pb2.Listener,
        "RouteConfiguration": route_pb2.RouteConfiguration,
        "Cluster": cluster_pb2.Cluster,
        "ClusterLoadAssignment": endpoint_pb2.ClusterLoadAssignment,
    }[type_url.rsplit(".", 1)[1]]
    assert resource.type_url == type_url
    return cls.FromString(resource.value)


def plain_pool(balancer: Any, pool: str) -> None:
    """Creates `pool` with health checks off: tests that count calls per
    backend exactly must not see a probe that timed out on a loaded
    machine take a backend out (the production-profile tests keep them on)."""
    from lookaside_registry.model import PoolConfig

    balancer.run(balancer.store.put_pool(PoolConfig.from_flat(pool, health_checks=False)))


def wait_settled(balancer: Any, pool: str, backends: int) -> None:
    """Waits until the balancer's watcher holds the pool's current version
    in Redis, with `backends` backends: a stream opened then gets them all
    in its first response."""
    from tests.support import wait_until

    def settled() -> bool:
        snap = balancer.server.watcher.get(pool)
        current = balancer.run(balancer.store.versions([pool]))[pool]
        return snap is not None and snap.version == current and len(snap.backends) == backends

    wait_until(settled, timeout=10)


def steady_port() -> int:
    """A free port below Linux's ephemeral range (32768-60999), so a
    balancer can stop and start again on it: a freed ephemeral port may be
    taken meanwhile as the source port of any outgoing connection."""
    import random
    import socket

    for _ in range(200):
        port = random.randrange(20_000, 32_000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")
