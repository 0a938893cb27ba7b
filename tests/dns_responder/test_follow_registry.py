"""Answers follow the registry in Redis, and survive Redis going away."""

from __future__ import annotations

from collections.abc import Callable

from lookaside.redis_process import RedisProcess
from lookaside_registry.model import PoolConfig
from tests.dns_responder.dns_handle import ZONE, DnsHandle, answers, rcode
from tests.support import wait_until


def a_records(dns: DnsHandle, pool: str) -> list[str]:
    return answers(dns.query(f"{pool}.{ZONE}", "A"), "A")


def test_backends_joining_and_leaving_change_the_a_records(dns: DnsHandle, pool_name: str) -> None:
    store = dns.store
    assert rcode(dns.query(f"_grpclb._tcp.{pool_name}.{ZONE}", "SRV")) == "NXDOMAIN"
    first = dns.run(
        store.register(
            pool=pool_name, host="10.7.0.1", ip="10.7.0.1", port=80, lease_ttl_ms=600_000
        )
    )
    # Registering creates the pool: its SRV record appears with it.
    wait_until(lambda: a_records(dns, pool_name) == ["10.7.0.1"])
    srv = dns.query(f"_grpclb._tcp.{pool_name}.{ZONE}", "SRV")
    assert answers(srv, "SRV") == [f"0 0 50051 lb-0.{ZONE}."]

    dns.run(
        store.register(
            pool=pool_name, host="10.7.0.2", ip="10.7.0.2", port=80, lease_ttl_ms=600_000
        )
    )
    wait_until(lambda: a_records(dns, pool_name) == ["10.7.0.1", "10.7.0.2"])

    dns.run(store.deregister(pool_name, first.backend_id, first.lease_id))
    wait_until(lambda: a_records(dns, pool_name) == ["10.7.0.2"])


def test_a_pool_without_serving_backends_keeps_its_srv(dns: DnsHandle, pool_name: str) -> None:
    lease = dns.run(
        dns.store.register(
            pool=pool_name, host="10.8.0.1", ip="10.8.0.1", port=80, lease_ttl_ms=600_000
        )
    )
    wait_until(lambda: a_records(dns, pool_name) == ["10.8.0.1"])
    dns.run(dns.store.deregister(pool_name, lease.backend_id, lease.lease_id))

    def emptied() -> bool:
        reply = dns.query(f"{pool_name}.{ZONE}", "A")
        return rcode(reply) == "NOERROR" and reply.rr == []

    wait_until(emptied)
    srv = dns.query(f"_grpclb._tcp.{pool_name}.{ZONE}", "SRV")
    assert answers(srv, "SRV") == [f"0 0 50051 lb-0.{ZONE}."]


def test_a_deleted_pool_becomes_nxdomain(dns: DnsHandle, pool_name: str) -> None:
    dns.run(dns.store.put_pool(PoolConfig(name=pool_name)))
    wait_until(lambda: rcode(dns.query(f"{pool_name}.{ZONE}", "A")) == "NOERROR")
    dns.run(dns.store.delete_pool(pool_name))
    wait_until(lambda: rcode(dns.query(f"{pool_name}.{ZONE}", "A")) == "NXDOMAIN")
    assert rcode(dns.query(f"_grpclb._tcp.{pool_name}.{ZONE}", "SRV")) == "NXDOMAIN"


def test_last_answers_are_kept_while_redis_is_down(
    dns_factory: Callable[..., DnsHandle], pool_name: str
) -> None:
    with RedisProcess() as redis_proc:
        dns = dns_factory(redis_url=redis_proc.url)
        dns.run(
            dns.store.register(
                pool=pool_name, host="10.9.0.1", ip="10.9.0.1", port=80, lease_ttl_ms=600_000
            )
        )
        wait_until(lambda: a_records(dns, pool_name) == ["10.9.0.1"])
        redis_proc.stop()
        wait_until(lambda: not dns.responder.watcher.redis_ok)
        assert a_records(dns, pool_name) == ["10.9.0.1"]
        srv = dns.query(f"_grpclb._tcp.{pool_name}.{ZONE}", "SRV", tcp=True)
        assert answers(srv, "SRV") == [f"0 0 50051 lb-0.{ZONE}."]


def test_servfail_until_the_registry_was_read_once(
    dns_factory: Callable[..., DnsHandle], pool_name: str
) -> None:
    # A Redis that is not running yet: the responder serves, but cannot know the pools.
    with RedisProcess() as stopped:
        port = stopped.port
    dns = dns_factory(redis_url=stopped.url)
    assert not dns.responder.watcher.redis_ok
    assert rcode(dns.query(f"{pool_name}.{ZONE}", "A")) == "SERVFAIL"
    assert rcode(dns.query("example.com", "A")) == "NXDOMAIN"
    with RedisProcess(port=port) as redis_proc:
        dns.run(dns.store.put_pool(PoolConfig(name=pool_name)))
        wait_until(lambda: rcode(dns.query(f"{pool_name}.{ZONE}", "A")) == "NOERROR")
        assert rcode(dns.query(f"other-{pool_name}.{ZONE}", "A")) == "NXDOMAIN"
        assert redis_proc.port == port
