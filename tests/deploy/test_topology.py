"""The compose topology run as local processes (tests/deploy/topology.py):
started in a shuffled order, both clients, the thin-client firehose and
the stock grpcio client through DNS SRV, spread over every backend. It is
the production profile: TLS on every gRPC port and the admin API, health
checks over TLS, the pool's own registration token."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from lookaside.demo.report import NO_SERVER, parse_summary
from lookaside_registry import keys
from tests.deploy.topology import Topology

TOPOLOGY_DB = 6
POOL = "routeguide"


@pytest.fixture
def topology_redis(redis_url: str) -> Iterator[str]:
    url = redis_url.rsplit("/", 1)[0] + f"/{TOPOLOGY_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    yield url


def until(predicate: Callable[[], bool], timeout: float, topo: Topology) -> None:
    """A bound on waiting for real processes; the processes' logs on failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s\n{topo.describe()}")


def _serving(client: redis.Redis) -> int:
    return sum(
        1 for raw in client.hvals(keys.backends(POOL)) if json.loads(raw)["state"] == "serving"
    )


@pytest.mark.parametrize("honour_depends_on", [True, False], ids=["depends_on", "restarts_only"])
def test_compose_topology_comes_up_and_both_clients_spread(
    topology_redis: str, tmp_path: Path, honour_depends_on: bool
) -> None:
    """With depends_on, as `docker compose up` starts it; without, every
    process at once in a shuffled order, and restart policies only."""
    seed = random.randrange(2**32)
    topo = Topology(
        topology_redis, tmp_path / "logs", seed, honour_depends_on=honour_depends_on
    ).start()
    client = redis.Redis.from_url(topology_redis, decode_responses=True)
    try:
        backends = [i for i in topo.instances if i.service.startswith("backend")]
        assert len(backends) == 3
        until(lambda: _serving(client) == 3, 90, topo)

        # Both clients run until the balancers have counted enough calls
        # reported by them (client load reports reach Redis).
        def finished() -> int:
            return int(client.hget(keys.load_total(POOL), "finished") or 0)

        clients = [i for i in topo.instances if i.service in ("firehose", "stock-client")]
        until(lambda: all(i.proc is not None for i in clients), 90, topo)

        def streams() -> int:
            raw = client.hvals(keys.streams(POOL))
            return sum(int(json.loads(v)["streams"]) for v in raw)

        until(lambda: streams() >= 2, 60, topo)  # both clients hold a BalanceLoad stream
        # The clients' tables count every call since they started, and some
        # were made while fewer backends served (a backend restarted until
        # the certificates were there): at least as many calls again with
        # all three serving, so the spread shows whatever came before.
        base = finished()
        until(lambda: finished() >= 2 * base + 600, 90, topo)
        [thin] = topo.stop_service("firehose")
        [stock] = topo.stop_service("stock-client")
        check_production_profile(topo, client)
    finally:
        topo.stop()
        client.close()
    details = f"seed {seed}, {topo.describe()}"
    restarts = {i.name: i.restarts for i in topo.instances if i.restarts}
    print(f"seed {seed}; start order: {', '.join(topo.order)}; restarts: {restarts}")
    for name, output in (("thin client", thin), ("stock client", stock)):
        per_server, _codes = parse_summary(output)
        served = {s: n for s, n in per_server.items() if s != NO_SERVER and n > 0}
        assert len(served) == 3, f"{name} reached {per_server}\n{details}"
        # Spread, not stuck on one (the faulty one may be ejected for a while).
        assert max(served.values()) < 0.8 * sum(served.values()), f"{name}: {per_server}"


def check_production_profile(topo: Topology, client: redis.Redis) -> None:
    """TLS on the balancers and admin API (plaintext is refused), backends
    registered with the pool's token, and never failed by health checks
    (which dial them over TLS)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    ca = Path(topo.files["/var/lib/lookaside/tls"]) / "ca.pem"
    balancer = topo.address("balancer-1", 50051)
    creds = grpc.ssl_channel_credentials(ca.read_bytes())
    with grpc.secure_channel(balancer, creds) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(balancer) as channel:
        with pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    import ssl

    import httpx

    admin = topo.address("admin", 8080)
    verify = ssl.create_default_context(cafile=str(ca))
    assert httpx.get(f"https://{admin}/readyz", verify=verify, timeout=10).status_code == 200
    events = [json.loads(e) for e in client.lrange(keys.events(POOL), 0, -1)]
    registered = {e.get("actor") for e in events if e.get("kind") == "registered"}
    # the principal names the pool's token and its id: one token for all
    assert len(registered) == 1, registered
    assert registered.pop().startswith("registration:pool-token:routeguide#")
    assert not [e for e in events if e.get("kind") == "unhealthy"], topo.describe()
