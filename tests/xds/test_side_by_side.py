"""One pool served at once to the three kinds of client a fleet has while it
moves off grpclb: the thin grpclb client (client_lib), a stock grpcio
grpclb client (found through the DNS responder) and a stock grpcio xDS
client, all open together, all spreading over every backend, and all
counted in the pool's load: grpclb's ClientStats and the xDS client's LRS
reports, apart by source.

In the production profile: the balancer over mTLS (every client presents
a certificate), a pool that requires client credentials (the thin client
also sends the pool's client token; the stock clients, which cannot put a
token on their balancer streams, are known by their certificate, one of
the pool's client_identities), TLS backends (the xDS client told so by the Cluster),
health checks and outlier detection on."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from balancer_server import metrics
from client_lib import LookasideChannel
from lookaside import certs
from lookaside.xds_bootstrap import bootstrap
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from lookaside_registry.model import PoolConfig
from tests.dns_responder.dns_handle import ZONE, DnsHandle
from tests.interop.helpers import GRPCLB_CONFIG, wait_dns_caught_up
from tests.support import BalancerHandle, RouteGuideBackend, register_all, wait_until
from tests.xds.helpers import XdsClient

CALLS = 150
CLIENT_TOKEN = "side-by-side-client-token-0123456789"


@pytest.fixture
def issued(tmp_path: Path) -> certs.Issued:
    return certs.issue(tmp_path / "certs", zone=ZONE)


@pytest.fixture
def guarded(
    redis_url: str, tmp_path: Path, pool_name: str, issued: certs.Issued
) -> Iterator[BalancerHandle]:
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "pools": {
                    pool_name: {
                        "tokens": ["side-by-side-registration-token-0123"],
                        "client_tokens": [CLIENT_TOKEN],
                        "client_identities": [certs.DEFAULT_CLIENT],
                        "require_client_credentials": True,
                    }
                }
            }
        )
    )
    handle = BalancerHandle(
        redis_url,
        insecure_registration=False,
        registration_policy=str(policy),
        health_checks=True,
        tls_cert=str(issued.server_cert),
        tls_key=str(issued.server_key),
        tls_client_ca=str(issued.ca),
        backend_tls_ca=str(issued.ca),
        # What the stock grpclb client checks too: the service's name.
        backend_tls_server_name=f"{{pool}}.{ZONE}",
    )
    yield handle
    handle.stop()


@pytest.fixture
def dns(redis_url: str, guarded: BalancerHandle) -> Iterator[DnsHandle]:
    handle = DnsHandle(redis_url, balancers=guarded.address)
    yield handle
    handle.stop()


def calls(stub: rg_grpc.RouteGuideStub, n: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        try:
            seen[stub.GetFeature(rg.Point(latitude=1, longitude=2), timeout=5).name] += 1
        except grpc.RpcError as exc:
            seen[f"error:{exc.code().name}"] += 1
    return seen


def test_thin_grpclb_stock_grpclb_and_xds_clients_share_one_pool(
    guarded: BalancerHandle,
    dns: DnsHandle,
    backends: list[RouteGuideBackend],
    pool_name: str,
    issued: certs.Issued,
) -> None:
    balancer = guarded
    balancer.run(
        balancer.store.put_pool(
            PoolConfig.from_flat(
                pool_name,
                report_interval_ms=1000,
                health_checks=True,
                health_interval_ms=500,
                health_timeout_ms=2000,
                outlier_detection=True,
                outlier_interval_ms=1000,
            )
        )
    )
    tls = grpc.ssl_server_credentials(
        [(issued.server_key.read_bytes(), issued.server_cert.read_bytes())]
    )
    three = [RouteGuideBackend().start(tls) for _ in range(3)]
    backends.extend(three)
    register_all(balancer, pool_name, three)
    names = {b.name for b in three}
    # Probed over TLS and found serving before any client comes.
    wait_until(lambda: metrics.HEALTH_PROBES.labels(pool_name, "ok")._value.get() >= 3, timeout=20)
    wait_dns_caught_up(dns, pool_name)
    ca = issued.ca.read_bytes()
    client_cert = grpc.ssl_channel_credentials(
        ca, issued.client_key.read_bytes(), issued.client_cert.read_bytes()
    )
    thin = LookasideChannel(
        pool_name,
        balancer.address,
        credentials=grpc.ssl_channel_credentials(ca),
        balancer_credentials=grpc.composite_channel_credentials(
            client_cert, grpc.access_token_call_credentials(CLIENT_TOKEN)
        ),
    )
    stock = grpc.secure_channel(
        f"dns://127.0.0.1:{dns.port}/{pool_name}.{ZONE}:{three[0].port}",
        client_cert,
        options=[
            ("grpc.dns_enable_srv_queries", 1),
            ("grpc.service_config", GRPCLB_CONFIG),
            ("grpc.grpclb_fallback_timeout_ms", 30_000),
        ],
    )
    doc = bootstrap(
        balancer.address,
        node_id="side-by-side",
        ca=str(issued.ca),
        cert=str(issued.client_cert),
        key=str(issued.client_key),
        backend_ca=str(issued.ca),
    )
    xds = XdsClient(pool_name, json.dumps(doc), xds_creds=True)
    try:
        grpc.channel_ready_future(thin).result(timeout=20)
        grpc.channel_ready_future(stock).result(timeout=20)
        stubs = {"thin": rg_grpc.RouteGuideStub(thin), "stock": rg_grpc.RouteGuideStub(stock)}
        seen: dict[str, Counter[str]] = {k: Counter() for k in ("thin", "stock", "xds")}

        def all_reach_all() -> bool:
            for kind, stub in stubs.items():
                seen[kind].update(calls(stub, 6))
            seen["xds"].update(xds.calls(6, timeout=10))
            return all(names <= set(c) for c in seen.values())

        wait_until(all_reach_all, timeout=30, interval=0)
        # All three at once: two grpclb streams and an xDS stream on one balancer.
        assert metrics.STREAMS_OPEN.labels(pool_name)._value.get() == 2
        assert [s["node_id"] for s in balancer.server.xds_streams.snapshot()] == ["side-by-side"]
        results = {kind: calls(stub, CALLS) for kind, stub in stubs.items()}
        results["xds"] = xds.calls(CALLS)
        print({k: dict(v) for k, v in results.items()})
        for kind, got in results.items():
            assert set(got) == names, (kind, got)
            # Round robin over the three: a third each, give or take what
            # a backend's connection or health may shift.
            assert max(got.values()) <= CALLS * 0.5, (kind, got)
        assert results["xds"] == Counter({b.name: CALLS // 3 for b in three})
        for kind, got in results.items():
            seen[kind].update(got)
        assert not any(k.startswith("error:") for c in seen.values() for k in c), seen

        # The pool's load: every call of the three clients, grpclb's
        # (ClientStats of the thin and the stock client) apart from xDS's
        # (LRS), once each client's next report is in (every second).
        made = {k: sum(c.values()) for k, c in seen.items()}
        expected = {"grpclb": made["thin"] + made["stock"], "xds": made["xds"]}

        def by_source() -> dict[str, dict[str, int]]:
            windows = balancer.run(balancer.store.load_windows(pool_name))
            return next(w for w in windows if w.name == "15m").by_source()

        def reported() -> bool:
            now = by_source()
            return all(now[s]["finished"] >= n for s, n in expected.items())

        wait_until(reported, timeout=15)
        load = by_source()
        print({"made": made, "by_source": load})
        for source, n in expected.items():
            assert load[source]["finished"] == n, (source, load)
            assert load[source]["started"] == n, (source, load)
            assert load[source]["known_received"] == n, (source, load)
            assert load[source]["dropped"] == 0, (source, load)
            assert load[source]["reports"] >= 1, (source, load)
    finally:
        xds.close()
        stock.close()
        thin.close()
