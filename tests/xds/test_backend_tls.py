"""Stock xDS clients to TLS and mTLS backends: the balancer runs with
--backend-tls-ca (and --backend-tls-cert for backends that require mTLS),
so each pool's Cluster carries an UpstreamTlsContext naming certificate
provider instances that the client's bootstrap defines
(`lookaside xds-bootstrap --backend-ca/--backend-cert`), and the client's
channel has xDS credentials. The balancer itself is served over TLS, health
checks and outlier detection are on."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from balancer_server import metrics
from balancer_server.xds import metrics as xds_metrics
from balancer_server.xds.resources import BACKEND_CA, BACKEND_CERT, CLUSTER, UPSTREAM_TLS
from lookaside.certs import Issued, issue
from lookaside.xds_bootstrap import bootstrap
from lookaside_registry.model import PoolConfig
from tests.support import BalancerHandle, RouteGuideBackend, register_all, wait_until
from tests.xds.helpers import XdsClient, unpack

POOL = "xds-backend-tls"


@dataclass
class Setup:
    mode: str
    pool: str
    balancer: BalancerHandle
    backends: list[RouteGuideBackend]
    certs: Issued


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Issued:
    return issue(tmp_path_factory.mktemp("certs"))


def backend_credentials(mode: str, certs: Issued) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(certs.server_key.read_bytes(), certs.server_cert.read_bytes())],
        root_certificates=certs.ca.read_bytes() if mode == "mtls" else None,
        require_client_auth=mode == "mtls",
    )


@pytest.fixture(scope="module", params=["tls", "mtls"])
def setup(request: pytest.FixtureRequest, redis_url: str, certs: Issued) -> Iterator[Setup]:
    mode: str = request.param
    pool = f"{POOL}-{mode}"
    settings: dict[str, Any] = dict(
        health_checks=True,
        tls_cert=str(certs.server_cert),
        tls_key=str(certs.server_key),
        backend_tls_ca=str(certs.ca),
        # The backends' certificate names localhost (among others).
        backend_tls_server_name="localhost",
    )
    if mode == "mtls":
        settings.update(
            backend_tls_cert=str(certs.client_cert), backend_tls_key=str(certs.client_key)
        )
    balancer = BalancerHandle(redis_url, **settings)
    backends: list[RouteGuideBackend] = []
    try:
        balancer.run(
            balancer.store.put_pool(
                PoolConfig.from_flat(
                    pool,
                    health_checks=True,
                    health_interval_ms=500,
                    health_timeout_ms=2000,
                    outlier_detection=True,
                    outlier_interval_ms=1000,
                )
            )
        )
        for i in range(3):
            backends.append(
                RouteGuideBackend(f"{mode}-{i}").start(backend_credentials(mode, certs))
            )
        register_all(balancer, pool, backends)
        # The balancer's own probes reach them over (m)TLS: the same setting.
        wait_until(lambda: metrics.HEALTH_PROBES.labels(pool, "ok")._value.get() >= 3, timeout=20)
        yield Setup(mode, pool, balancer, backends, certs)
    finally:
        for b in backends:
            b.stop()
        balancer.stop()


def client(s: Setup, xds_creds: bool = True, providers: bool = True) -> XdsClient:
    mtls = s.mode == "mtls"
    doc = bootstrap(
        s.balancer.address,
        node_id=f"backend-{s.mode}",
        ca=str(s.certs.ca),
        backend_ca=str(s.certs.ca) if providers else "",
        backend_cert=str(s.certs.client_cert) if providers and mtls else "",
        backend_key=str(s.certs.client_key) if providers and mtls else "",
    )
    return XdsClient(s.pool, json.dumps(doc), xds_creds=xds_creds)


def framed_message(type_url: str, framed: bytes) -> Any:
    """A hub resource (an Any framed as DiscoveryResponse field 2) as its message."""
    from google.protobuf import any_pb2

    i, length, shift = 1, 0, 0  # after the tag byte: the length, a varint
    while True:
        byte = framed[i]
        length |= (byte & 0x7F) << shift
        i += 1
        shift += 7
        if not byte & 0x80:
            break
    assert len(framed) == i + length
    return unpack(type_url, any_pb2.Any.FromString(framed[i:]))


def test_the_cluster_names_the_bootstraps_certificate_providers(setup: Setup) -> None:
    resource = setup.balancer.server.xds_hub.resource(CLUSTER, setup.pool)
    assert resource is not None
    cluster = framed_message(CLUSTER, resource.framed)
    socket = cluster.transport_socket
    assert socket.name == "envoy.transport_sockets.tls"
    assert socket.typed_config.type_url == UPSTREAM_TLS
    context = tls_pb2.UpstreamTlsContext.FromString(socket.typed_config.value).common_tls_context
    validation = context.validation_context
    assert validation.ca_certificate_provider_instance.instance_name == BACKEND_CA
    assert [m.exact for m in validation.match_subject_alt_names] == ["localhost"]
    expected = BACKEND_CERT if setup.mode == "mtls" else ""
    assert context.tls_certificate_provider_instance.instance_name == expected


def test_calls_spread_over_tls_backends(setup: Setup) -> None:
    xds = client(setup)
    try:
        seen: Counter[str] = Counter()

        def all_up() -> bool:
            seen.update(xds.calls(6, timeout=10))
            return {b.name for b in setup.backends} <= set(seen)

        wait_until(all_up, timeout=30, interval=0)
        assert xds.calls(300) == Counter({b.name: 100 for b in setup.backends})
    finally:
        xds.close()


def test_a_client_without_the_certificate_providers_refuses_the_cluster(setup: Setup) -> None:
    """The Cluster names instances its bootstrap does not define: NACKed,
    counted, and the client's calls say why."""
    before = xds_metrics.XDS_NACKS.labels("cds")._value.get()
    xds = client(setup, providers=False)
    try:
        seen, details = xds.first_error(2, timeout=10)
        assert seen == Counter({"error:UNAVAILABLE": 2}), (seen, details)
        assert "unrecognized certificate provider instance name" in details, details
        wait_until(lambda: xds_metrics.XDS_NACKS.labels("cds")._value.get() > before, timeout=5)
    finally:
        xds.close()


def test_a_channel_without_xds_credentials_cannot_reach_tls_backends(setup: Setup) -> None:
    """With insecure channel credentials gRPC ignores the Cluster's TLS and
    dials the backends in plaintext: their handshake fails."""
    xds = client(setup, xds_creds=False)
    try:
        seen, details = xds.first_error(2, timeout=10)
        assert seen == Counter({"error:UNAVAILABLE": 2}), (seen, details)
    finally:
        xds.close()


def test_a_backend_name_that_does_not_match_is_refused(
    redis_url: str, certs: Issued, tmp_path: Path
) -> None:
    """--backend-tls-server-name is checked by xDS clients as by the
    balancer's probes: certificates that do not carry it fail the
    handshake."""
    pool = f"{POOL}-wrong-name"
    balancer = BalancerHandle(
        redis_url,
        backend_tls_ca=str(certs.ca),
        backend_tls_server_name="{pool}.elsewhere.test",
    )
    backend = RouteGuideBackend("wrong-name").start(backend_credentials("tls", certs))
    try:
        balancer.run(balancer.store.put_pool(PoolConfig.from_flat(pool, health_checks=False)))
        register_all(balancer, pool, [backend])
        doc = bootstrap(balancer.address, node_id="wrong-name", backend_ca=str(certs.ca))
        xds = XdsClient(pool, json.dumps(doc), xds_creds=True)
        try:
            seen, details = xds.first_error(2, timeout=10)
            assert seen == Counter({"error:UNAVAILABLE": 2}), (seen, details)
            assert backend.calls == 0
            assert "SANs from certificate did not match" in details, details
        finally:
            xds.close()
    finally:
        backend.stop()
        balancer.stop()


def test_the_demo_client_reaches_tls_backends_over_xds(setup: Setup) -> None:
    """`lookaside routeguide client --lb xds` with TLS flags as the lab
    prints them (--server-name included): its
    bootstrap carries the certificate providers, its channel xDS
    credentials (a process of its own: gRPC reads a bootstrap once)."""
    import os
    import re
    import subprocess
    import sys

    from lookaside.demo.report import parse_summary
    from tests.xds.helpers import ROOT

    mtls = setup.mode == "mtls"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_XDS_BOOTSTRAP")}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    client_cert = (
        ["--tls-cert", str(setup.certs.client_cert), "--tls-key", str(setup.certs.client_key)]
        if mtls
        else []
    )
    done = subprocess.run(
        [
            sys.executable, "-m", "lookaside", "routeguide", "client", "--lb", "xds",
            "--balancer", setup.balancer.address, "--target", f"xds:///{setup.pool}",
            "--mode", "repeatn", "--api", "GetFeature", "-n", "30",
            "--tls-ca", str(setup.certs.ca), "--server-name", "localhost", *client_cert,
        ],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    per_server, codes = parse_summary(done.stdout)
    assert codes == {} and sum(per_server.values()) == 30, done.stdout
    # The test backends answer with their name (they set no x-served-by).
    answered = Counter(re.findall(r'name: "([^"]+)"', done.stdout))
    assert set(answered) == {b.name for b in setup.backends}, done.stdout
