"""Shared fixtures: a real redis-server on a free port for the session, a
real balancer per test, and unique pool names so tests never share state."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from lookaside.redis_process import RedisProcess
from tests.support import BalancerHandle, RouteGuideBackend


@pytest.fixture(autouse=True)
def context_file(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test (and every process it starts) has a context file of its
    own, missing until written: never the user's (lookaside.context)."""
    path = tmp_path_factory.mktemp("context") / "context.json"
    monkeypatch.setenv("LOOKASIDE_CONTEXT", str(path))
    return str(path)


@pytest.fixture(scope="session")
def redis_proc() -> Iterator[RedisProcess]:
    proc = RedisProcess().start()
    assert proc.port != 6379
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def redis_url(redis_proc: RedisProcess) -> str:
    return redis_proc.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def pool_name() -> str:
    return f"pool-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def balancer(redis_url: str) -> Iterator[BalancerHandle]:
    handle = BalancerHandle(redis_url)
    yield handle
    handle.stop()


@pytest.fixture
def backends() -> Iterator[list[RouteGuideBackend]]:
    started: list[RouteGuideBackend] = []

    yield started  # start_backends(backends, n) adds to it
    for b in started:
        b.stop()


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    from lookaside.redis_cluster import RedisClusterProcesses

    cluster = RedisClusterProcesses(masters=3).start()
    yield cluster.url
    cluster.stop()
