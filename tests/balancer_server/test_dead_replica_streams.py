"""A replica killed without its clean stop (kill -9, a lost host) leaves
its stream counts in each pool's streams hash; its id (host-pid) is never
used again. Such an entry is removed once it is STREAMS_FORGET_MS old, and
a streams hash no live replica writes expires. Against real Redis, and the
MemoryStore twin for the removal."""

from __future__ import annotations

import asyncio
import json
import time

import redis

from lookaside_registry import keys, load
from lookaside_registry.memory import MemoryStore
from lookaside_registry.model import PoolConfig
from tests.support import BalancerHandle, LbStream, wait_until


def entry(count: int, age_ms: int) -> str:
    return json.dumps({"streams": count, "ts_ms": int(time.time() * 1000) - age_ms})


def test_a_killed_replicas_counts_are_forgotten_and_the_hash_expires(
    balancer: BalancerHandle, redis_client: redis.Redis, pool_name: str
) -> None:
    key = keys.streams(pool_name)
    me = balancer.server.replica_id
    balancer.run(balancer.store.put_pool(PoolConfig(name=pool_name)))
    # What a replica killed long ago left, and one killed just now.
    redis_client.hset(key, "host-1234-w0", entry(20, load.STREAMS_FORGET_MS + 60_000))
    redis_client.hset(key, "host-5678-w1", entry(3, 1_000))
    stream = LbStream(balancer.address, pool_name)
    try:
        wait_until(lambda: json.loads(redis_client.hget(key, me) or "{}").get("streams") == 1)
        # A live replica's write keeps the hash for STREAMS_FORGET_MS at most.
        assert 0 < redis_client.pttl(key) <= load.STREAMS_FORGET_MS
        rows = balancer.run(balancer.store.replica_streams(pool_name))
    finally:
        stream.close()
    assert sorted(redis_client.hkeys(key)) == sorted([me, "host-5678-w1"])
    assert {r.replica: r.streams for r in rows} == {me: 1, "host-5678-w1": 3}


def test_the_memory_twin_forgets_the_same_entries() -> None:
    store = MemoryStore()
    key = keys.streams("p")
    store.keyspace.call("HSET", key, "old", entry(5, load.STREAMS_FORGET_MS + 60_000))
    store.keyspace.call("HSET", key, "junk", "not json")
    store.keyspace.call("HSET", key, "new", entry(2, 0))
    rows = asyncio.run(store.replica_streams("p"))
    assert [r.replica for r in rows] == ["new"]
    assert set(store.keyspace.hash(key)) == {"new"}
