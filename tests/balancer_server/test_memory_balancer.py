"""The balancer over the in-memory adapter of the registry port: a
registration through its Registry API lands in the MemoryStore it was given,
and BalanceLoad streams get their lists from that store (no Redis)."""

from __future__ import annotations

import grpc

from lookaside_proto.registry.v1 import registry_pb2 as pb
from lookaside_proto.registry.v1 import registry_pb2_grpc as pb_grpc
from lookaside_registry.memory import MemoryStore
from tests.support import BalancerHandle, LbStream

# Nothing listens here: the balancer must not reach for the settings' Redis.
NO_REDIS = "redis://127.0.0.1:1/0"


def test_a_balancer_serves_lists_from_the_store_it_is_given() -> None:
    memory = MemoryStore()
    handle = BalancerHandle(NO_REDIS, store=memory)
    try:
        assert handle.store is memory
        with grpc.insecure_channel(handle.address) as channel:
            reply = pb_grpc.RegistryStub(channel).Register(
                pb.RegisterRequest(pool="mem", host="127.0.0.1", port=9801), timeout=10
            )
        snap = handle.run(memory.snapshot("mem"))
        assert snap is not None
        assert [b.id for b in snap.backends] == [reply.backend_id]
        stream = LbStream(handle.address, "mem")
        try:
            assert stream.next().HasField("initial_response")
            entries = stream.list_where(lambda entries: len(entries) == 1)
            assert [a for a, _, _ in entries] == ["127.0.0.1:9801"]
            handle.run(memory.register(pool="mem", host="127.0.0.1", ip="127.0.0.1", port=9802))
            entries = stream.list_where(lambda entries: len(entries) == 2)
            assert sorted(a for a, _, _ in entries) == ["127.0.0.1:9801", "127.0.0.1:9802"]
        finally:
            stream.close()
    finally:
        handle.stop()
