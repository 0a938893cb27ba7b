"""Fixtures for the stock-client tests: the DNS responder in front of the
balancer, routeguide backends, and stock grpcio channels that find the
balancer through DNS only."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from tests.dns_responder.dns_handle import ZONE, DnsHandle
from tests.interop.helpers import GRPCLB_CONFIG, Backend, wait_dns_caught_up
from tests.support import BalancerHandle


@pytest.fixture
def backends() -> Iterator[Callable[..., list[Backend]]]:
    started: list[Backend] = []

    def start(n: int, prefix: str = "b", ports: list[int] | None = None) -> list[Backend]:
        out = []
        for i in range(n):
            backend = Backend(f"{prefix}{i}").start_on(ports[i] if ports else 0)
            started.append(backend)
            out.append(backend)
        return out

    yield start
    for backend in started:
        backend.stop()


@pytest.fixture
def fallback_backend() -> Iterator[Backend]:
    """The backend a stock client falls back to: the pool's A records give
    127.0.0.1 and the target's port is this backend's."""
    backend = Backend("fallback").start()
    yield backend
    backend.stop()


@pytest.fixture
def dns_factory(redis_url: str) -> Iterator[Callable[..., DnsHandle]]:
    handles: list[DnsHandle] = []

    def make(balancer: BalancerHandle, **overrides: Any) -> DnsHandle:
        overrides.setdefault("balancers", balancer.address)
        handle = DnsHandle(redis_url, **overrides)
        handles.append(handle)
        return handle

    yield make
    for handle in handles:
        handle.stop()


@pytest.fixture
def dns(dns_factory: Callable[..., DnsHandle], balancer: BalancerHandle) -> DnsHandle:
    return dns_factory(balancer)


@pytest.fixture
def stock_channel() -> Iterator[Callable[..., grpc.Channel]]:
    """Opens unmodified grpcio channels that find the balancer through DNS:
    stock_channel(dns, pool, fallback_port, **options). The responder has
    caught up with the pool when the channel opens."""
    channels: list[grpc.Channel] = []

    def open_channel(
        dns: DnsHandle,
        pool: str,
        port: int,
        *,
        service_config: str | None = GRPCLB_CONFIG,
        **options: Any,
    ) -> grpc.Channel:
        opts: dict[str, Any] = {
            "grpc.dns_enable_srv_queries": 1,
            "grpc.dns_min_time_between_resolutions_ms": 200,
            "grpc.grpclb_fallback_timeout_ms": 3000,
        }
        if service_config is not None:
            opts["grpc.service_config"] = service_config
        opts.update({f"grpc.{k}": v for k, v in options.items()})
        wait_dns_caught_up(dns, pool)
        target = f"dns://127.0.0.1:{dns.port}/{pool}.{ZONE}:{port}"
        channel = grpc.insecure_channel(target, options=list(opts.items()))
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        channel.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The combination matrix's figures, when it ran (test_matrix.py)."""
    import sys

    matrix = sys.modules.get("tests.interop.test_matrix")
    for line in matrix.summary() if matrix is not None else []:
        terminalreporter.write_line(line)
