"""The stock grpcio xDS client reports its load over LRS when the Cluster
names `lrs_server: self`, and the balancer's LoadReportingService counts
it into the pool's load beside grpclb's: calls, successes and drops by
category. TLS with a client certificate on the xDS link (the bootstrap
`lookaside xds-bootstrap` makes), a pool that requires client
credentials, real Redis.

The ADS side is a fixed responder of the test's (tests/interop/
xds_fixture.py) hosting the balancer's own LoadReportingService over the
balancer's own watcher and load sink; the same service on the balancer's
own port is covered by tests/balancer_server/test_lrs.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from balancer_server import metrics
from balancer_server.tls import server_credentials
from lookaside import certs
from lookaside.xds_bootstrap import bootstrap
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from lookaside_registry import keys
from lookaside_registry.model import DropRate, PoolConfig
from tests.interop.helpers import Backend
from tests.interop.xds_fixture import XdsFixture, resources
from tests.support import BalancerHandle, wait_until

CALLS = 300
DROP_PER_MILLE = 200


@pytest.fixture
def issued(tmp_path: Path) -> certs.Issued:
    return certs.issue(tmp_path / "certs")


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
                        "tokens": ["registration-token-0123456789ab"],
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
        tls_cert=str(issued.server_cert),
        tls_key=str(issued.server_key),
        tls_client_ca=str(issued.ca),
    )
    yield handle
    handle.stop()


def test_stock_xds_client_load_reaches_the_pool_load(
    guarded: BalancerHandle,
    redis_client: Any,
    pool_name: str,
    issued: certs.Issued,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drops = {"lb": DROP_PER_MILLE}
    config = PoolConfig(
        name=pool_name, report_interval_ms=1000, drops=(DropRate("lb", DROP_PER_MILLE),)
    )
    guarded.run(guarded.store.put_pool(config))
    wait_until(lambda: pool_name in guarded.server.watcher.snapshots)
    backends = [Backend(f"b{i}").start() for i in range(3)]
    creds = server_credentials(
        str(issued.server_cert), str(issued.server_key), str(issued.ca), True
    )
    fixture = XdsFixture(guarded, resources(pool_name, [b.port for b in backends], drops), creds)
    doc = bootstrap(
        fixture.address,
        node_id=f"lrs-test-{pool_name}",
        ca=str(issued.ca),
        cert=str(issued.client_cert),
        key=str(issued.client_key),
    )
    monkeypatch.delenv("GRPC_XDS_BOOTSTRAP", raising=False)
    monkeypatch.setenv("GRPC_XDS_BOOTSTRAP_CONFIG", json.dumps(doc))
    before = metrics.REGISTRY.get_sample_value(
        "lookaside_balancer_lrs_reports_total", {"pool": pool_name}
    )
    channel = grpc.insecure_channel(f"xds:///{pool_name}")
    ok = dropped = 0
    try:
        stub = rg_grpc.RouteGuideStub(channel)
        for i in range(CALLS):
            try:
                # The first call waits for the resources; later ones are
                # dropped or answered at once.
                stub.GetFeature(rg.Point(latitude=i), timeout=15, wait_for_ready=True)
                ok += 1
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                assert "drop" in (exc.details() or "").lower(), exc.details()
                dropped += 1

        def total() -> dict[str, int]:
            return {k: int(v) for k, v in redis_client.hgetall(keys.load_total(pool_name)).items()}

        # Reports come every second; the calls are all in once they add up.
        wait_until(lambda: total().get("xds:finished", 0) >= CALLS)
    finally:
        channel.close()
        fixture.stop()
        for b in backends:
            b.stop()
    got = total()
    assert ok + dropped == CALLS
    assert 0 < dropped < CALLS  # 20 % asked for; the client applied it
    assert all(b.calls > 0 for b in backends)  # round robin over the assignment
    assert sum(b.calls for b in backends) == ok
    assert got["xds:finished"] == CALLS and got["xds:started"] == CALLS
    assert got["xds:known_received"] == ok
    assert got["xds:dropped"] == dropped and got["drop:lb"] == dropped
    assert got["finished"] == CALLS  # in the pool's load, where grpclb's count too
    assert got["xds:reports"] >= 1
    after = metrics.REGISTRY.get_sample_value(
        "lookaside_balancer_lrs_reports_total", {"pool": pool_name}
    )
    assert (after or 0) - (before or 0) == got["xds:reports"]
