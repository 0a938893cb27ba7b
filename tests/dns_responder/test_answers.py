"""What the responder answers for each kind of name, over UDP and TCP."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from dnslib import QTYPE

from lookaside_registry.machine import Event
from lookaside_registry.model import PoolConfig
from tests.dns_responder.dns_handle import ZONE, DnsHandle, answers, rcode
from tests.support import wait_until

TRANSPORTS = [pytest.param(False, id="udp"), pytest.param(True, id="tcp")]


def make_pool(dns: DnsHandle, pool: str, ips: list[str] = ()) -> list[str]:
    """Creates a pool with backends (port 8080) and waits until the responder knows it.
    Returns the backend ids."""
    dns.run(dns.store.put_pool(PoolConfig(name=pool)))
    ids = []
    for ip in ips:
        lease = dns.run(
            dns.store.register(pool=pool, host=ip, ip=ip, port=8080, lease_ttl_ms=600_000)
        )
        ids.append(lease.backend_id)
    want = sorted({ip for ip in ips if ":" not in ip})

    def known() -> bool:
        reply = dns.query(f"{pool}.{ZONE}", "A")
        return rcode(reply) == "NOERROR" and answers(reply, "A") == want

    wait_until(known)
    return ids


@pytest.mark.parametrize("tcp", TRANSPORTS)
def test_srv_points_at_the_balancer_with_its_address_in_additional(
    dns_factory: Callable[..., DnsHandle], pool_name: str, tcp: bool
) -> None:
    dns = dns_factory(balancers="127.0.0.1:50123")
    make_pool(dns, pool_name)
    reply = dns.query(f"_grpclb._tcp.{pool_name}.{ZONE}", "SRV", tcp=tcp)
    assert rcode(reply) == "NOERROR"
    assert reply.header.aa == 1
    assert answers(reply, "SRV") == [f"0 0 50123 lb-0.{ZONE}."]
    additional = [(str(r.rname), QTYPE.get(r.rtype), str(r.rdata)) for r in reply.ar]
    assert additional == [(f"lb-0.{ZONE}.", "A", "127.0.0.1")]
    # The target itself resolves, as clients look it up with separate queries.
    assert answers(dns.query(f"lb-0.{ZONE}", "A", tcp=tcp), "A") == ["127.0.0.1"]
    empty = dns.query(f"lb-0.{ZONE}", "AAAA", tcp=tcp)
    assert rcode(empty) == "NOERROR" and empty.rr == []


@pytest.mark.parametrize("tcp", TRANSPORTS)
def test_a_and_aaaa_list_the_serving_backends(dns: DnsHandle, pool_name: str, tcp: bool) -> None:
    ids = make_pool(dns, pool_name, ["10.1.0.1", "10.1.0.2", "10.1.0.3", "fd00::7"])
    dns.run(dns.store.operate(pool_name, ids[1], Event.OPERATOR_DRAIN, actor="test"))
    wait_until(
        lambda: answers(dns.query(f"{pool_name}.{ZONE}", "A"), "A") == ["10.1.0.1", "10.1.0.3"]
    )
    reply = dns.query(f"{pool_name}.{ZONE}", "A", tcp=tcp)
    assert answers(reply, "A") == ["10.1.0.1", "10.1.0.3"]
    assert all(r.ttl == 1 for r in reply.rr)
    assert answers(dns.query(f"{pool_name}.{ZONE}", "AAAA", tcp=tcp), "AAAA") == ["fd00::7"]


def test_backends_sharing_an_ip_give_one_record(dns: DnsHandle, pool_name: str) -> None:
    make_pool(dns, pool_name, ["10.2.0.1"])
    dns.run(
        dns.store.register(
            pool=pool_name, host="10.2.0.1", ip="10.2.0.1", port=9090, lease_ttl_ms=600_000
        )
    )
    wait_until(lambda: len(dns.run(dns.store.snapshot(pool_name)).serving) == 2)
    reply = dns.query(f"{pool_name}.{ZONE}", "A")
    assert [str(r.rdata) for r in reply.rr] == ["10.2.0.1"]


def test_aaaa_of_an_ipv4_pool_is_empty_with_soa(dns: DnsHandle, pool_name: str) -> None:
    make_pool(dns, pool_name, ["10.3.0.1"])
    reply = dns.query(f"{pool_name}.{ZONE}", "AAAA")
    assert rcode(reply) == "NOERROR"
    assert reply.rr == []
    assert [QTYPE.get(r.rtype) for r in reply.auth] == ["SOA"]
    assert str(reply.auth[0].rname) == f"{ZONE}."


def test_unknown_pool_and_names_outside_the_zone_are_nxdomain(
    dns: DnsHandle, pool_name: str
) -> None:
    make_pool(dns, pool_name, ["10.4.0.1"])
    for name, qtype in [
        (f"no-such-pool.{ZONE}", "A"),
        (f"_grpclb._tcp.no-such-pool.{ZONE}", "SRV"),
        (f"_grpc_config.no-such-pool.{ZONE}", "TXT"),
        (f"lb-7.{ZONE}", "A"),
    ]:
        reply = dns.query(name, qtype)
        assert rcode(reply) == "NXDOMAIN", name
        assert [QTYPE.get(r.rtype) for r in reply.auth] == ["SOA"], name
    for name in [f"{pool_name}.example.com", "lookaside", f"{pool_name}.test"]:
        reply = dns.query(name, "A")
        assert rcode(reply) == "NXDOMAIN", name
        assert reply.rr == [] and reply.header.aa == 0, name


def test_names_are_case_insensitive(dns: DnsHandle, pool_name: str) -> None:
    make_pool(dns, pool_name, ["10.5.0.1"])
    reply = dns.query(f"_GRPCLB._TCP.{pool_name.upper()}.LookAside.Test", "SRV")
    assert answers(reply, "SRV") == [f"0 0 50051 lb-0.{ZONE}."]
    # The answer echoes the name as asked.
    assert str(reply.rr[0].rname) == f"_GRPCLB._TCP.{pool_name.upper()}.LookAside.Test."
    assert answers(dns.query(f"{pool_name.upper()}.{ZONE}", "A"), "A") == ["10.5.0.1"]


def test_several_balancers_give_several_srv_records(
    dns_factory: Callable[..., DnsHandle], pool_name: str
) -> None:
    dns = dns_factory(balancers="127.0.0.1:50061, 127.0.0.2:50062,localhost:50063,[::1]:50064")
    make_pool(dns, pool_name)
    reply = dns.query(f"_grpclb._tcp.{pool_name}.{ZONE}", "SRV")
    assert [str(r.rdata) for r in reply.rr] == [
        f"0 0 50061 lb-0.{ZONE}.",
        f"0 0 50062 lb-1.{ZONE}.",
        "0 0 50063 localhost.",
        f"0 0 50064 lb-3.{ZONE}.",
    ]
    additional = {(str(r.rname), str(r.rdata)) for r in reply.ar}
    assert {
        (f"lb-0.{ZONE}.", "127.0.0.1"),
        (f"lb-1.{ZONE}.", "127.0.0.2"),
        (f"lb-3.{ZONE}.", "::1"),
    } <= additional
    # localhost is resolved by the responder and its address added too.
    assert any(name == "localhost." for name, _ in additional)
    assert answers(dns.query(f"lb-1.{ZONE}", "A"), "A") == ["127.0.0.2"]
    assert answers(dns.query(f"lb-3.{ZONE}", "AAAA"), "AAAA") == ["::1"]
    # A name outside the zone is not ours to answer, even when it is a target.
    assert rcode(dns.query("localhost", "A")) == "NXDOMAIN"


def test_txt_grpc_config_selects_grpclb(dns: DnsHandle, pool_name: str) -> None:
    make_pool(dns, pool_name, ["10.6.0.1"])
    reply = dns.query(f"_grpc_config.{pool_name}.{ZONE}", "TXT")
    assert rcode(reply) == "NOERROR"
    assert len(reply.rr) == 1
    text = b"".join(reply.rr[0].rdata.data).decode()
    assert text.startswith("grpc_config=")
    config = json.loads(text.removeprefix("grpc_config="))
    assert config == [{"serviceConfig": {"loadBalancingConfig": [{"grpclb": {}}]}}]


def test_txt_is_empty_without_a_service_config(
    dns_factory: Callable[..., DnsHandle], pool_name: str
) -> None:
    dns = dns_factory(service_config="")
    make_pool(dns, pool_name, ["10.6.0.2"])
    reply = dns.query(f"_grpc_config.{pool_name}.{ZONE}", "TXT")
    assert rcode(reply) == "NOERROR"
    assert reply.rr == []


def test_apex_soa(dns: DnsHandle) -> None:
    reply = dns.query(ZONE, "SOA")
    assert rcode(reply) == "NOERROR"
    assert [QTYPE.get(r.rtype) for r in reply.rr] == ["SOA"]
    assert str(reply.rr[0].rdata.mname) == f"ns.{ZONE}."
