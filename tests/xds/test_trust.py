"""xDS in the production profile, as far as the stock client can go: the
balancer over TLS or mTLS (the bootstrap's `tls` channel_creds, gRFC A65),
a registration policy with per-pool client credentials (a client token
sent through the bootstrap's `jwt_token_file` call_creds, gRFC A97, or a
client certificate), health checks and outlier detection on. The
backends serve plaintext here; TLS and mTLS backends (the Cluster's
UpstreamTlsContext): tests/xds/test_backend_tls.py."""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from balancer_server.xds import metrics as xds_metrics
from lookaside.certs import Issued, issue
from lookaside_registry.model import PoolConfig
from tests.support import (
    BalancerHandle,
    RouteGuideBackend,
    register_all,
    start_backends,
    wait_until,
)
from tests.xds.helpers import XdsClient, bootstrap

POOL = "xds-trust"
CALL_CREDS_ENV = {"GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS": "true"}


def jwt(subject: str) -> str:
    """A JWT-shaped client token (gRPC's jwt_token_file reads its expiry)."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    claims = {"sub": subject, "exp": int(time.time()) + 3600}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Issued:
    return issue(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module", params=["tls", "mtls"])
def setup(
    request: pytest.FixtureRequest,
    redis_url: str,
    certs: Issued,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, BalancerHandle, list[RouteGuideBackend], Path]]:
    mode: str = request.param
    pool = f"{POOL}-{mode}"
    where = tmp_path_factory.mktemp(mode)
    (where / "good.jwt").write_text(jwt("good"))
    (where / "bad.jwt").write_text(jwt("bad"))
    policy = where / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "pools": {
                    pool: {
                        "tokens": ["xds-trust-registration-token-0123"],
                        "client_tokens": [(where / "good.jwt").read_text()],
                        "client_identities": ["backend.lookaside.test"],
                        "require_client_credentials": True,
                    }
                }
            }
        )
    )
    settings: dict[str, Any] = dict(
        insecure_registration=False,
        registration_policy=str(policy),
        health_checks=True,
        tls_cert=str(certs.server_cert),
        tls_key=str(certs.server_key),
    )
    if mode == "mtls":
        settings.update(tls_client_ca=str(certs.ca), require_client_cert=True)
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
        register_all(balancer, pool, start_backends(backends, 3))
        yield mode, balancer, backends, where
    finally:
        for b in backends:
            b.stop()
        balancer.stop()


def tls_creds(certs: Issued, mode: str, client_cert: bool = True) -> list[dict[str, Any]]:
    config = {"ca_certificate_file": str(certs.ca)}
    if mode == "mtls" and client_cert:
        config.update(
            certificate_file=str(certs.client_cert), private_key_file=str(certs.client_key)
        )
    return [{"type": "tls", "config": config}]


def client(
    setup: tuple[str, BalancerHandle, list[RouteGuideBackend], Path],
    certs: Issued,
    token: str | None,
    client_cert: bool = True,
) -> XdsClient:
    mode, balancer, _, where = setup
    call_creds = None
    if token is not None:
        call_creds = [{"type": "jwt_token_file", "config": {"jwt_token_file": str(where / token)}}]
    config = bootstrap(
        balancer.address,
        channel_creds=tls_creds(certs, mode, client_cert),
        call_creds=call_creds,
    )
    return XdsClient(f"{POOL}-{mode}", config, env=CALL_CREDS_ENV)


def test_a_client_with_the_pools_credential_spreads_over_every_backend(
    setup: tuple[str, BalancerHandle, list[RouteGuideBackend], Path], certs: Issued
) -> None:
    mode, _, backends, _ = setup
    # TLS: the pool's client token; mTLS: the client certificate alone.
    xds = client(setup, certs, "good.jwt" if mode == "tls" else None)
    try:
        seen: Counter[str] = Counter()

        def all_up() -> bool:
            seen.update(xds.calls(6, timeout=10))
            return {b.name for b in backends} <= set(seen)

        wait_until(all_up, timeout=30, interval=0)
        assert xds.calls(300) == Counter({b.name: 100 for b in backends})
    finally:
        xds.close()


def test_a_token_not_the_pools_is_refused(
    setup: tuple[str, BalancerHandle, list[RouteGuideBackend], Path], certs: Issued
) -> None:
    before = xds_metrics.XDS_REFUSED.labels("credentials")._value.get()
    xds = client(setup, certs, "bad.jwt")
    try:
        seen, details = xds.first_error(3)
        assert seen == Counter({"error:UNAVAILABLE": 3}), seen
        assert "UNAUTHENTICATED" in details and "client token is not valid" in details, details
        assert xds_metrics.XDS_REFUSED.labels("credentials")._value.get() > before
    finally:
        xds.close()


def test_mtls_needs_the_client_certificate(
    setup: tuple[str, BalancerHandle, list[RouteGuideBackend], Path], certs: Issued
) -> None:
    """Without a client certificate (but with the pool's token): refused
    by the mTLS balancer's handshake, served by the TLS one."""
    mode, _, backends, _ = setup
    xds = client(setup, certs, "good.jwt", client_cert=False)
    try:
        seen, details = xds.first_error(3)
        if mode == "mtls":
            assert seen == Counter({"error:UNAVAILABLE": 3}), (seen, details)
        else:
            assert set(seen) <= {b.name for b in backends}, (seen, details)
    finally:
        xds.close()
