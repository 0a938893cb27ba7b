from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.dns_responder.dns_handle import DnsHandle


@pytest.fixture
def dns_factory(redis_url: str) -> Iterator[Callable[..., DnsHandle]]:
    """Starts responders with settings overrides; stops them all afterwards."""
    handles: list[DnsHandle] = []

    def make(**overrides: Any) -> DnsHandle:
        overrides.setdefault("balancers", "127.0.0.1:50051")
        handle = DnsHandle(overrides.pop("redis_url", redis_url), **overrides)
        handles.append(handle)
        return handle

    yield make
    for handle in handles:
        handle.stop()


@pytest.fixture
def dns(dns_factory: Callable[..., DnsHandle]) -> DnsHandle:
    return dns_factory()
