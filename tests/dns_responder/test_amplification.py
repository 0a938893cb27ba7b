"""The DNS responder is no amplifier: real UDP queries, each reply's size
measured against its query's. ANY gets one record (RFC 8482), UDP answers
stop at 1,232 bytes (TC beyond, whole over TCP), and a flood from one
source network is answered only at its rate."""

from __future__ import annotations

import socket
import threading
import time

import grpc
import pytest
from dnslib import EDNS0, QTYPE, DNSRecord

from dns_responder import metrics
from dns_responder.ratelimit import ResponseRateLimit, Verdict, source_network
from tests.dns_responder.dns_handle import ZONE, DnsHandle, answers
from tests.support import wait_until


def register(dns: DnsHandle, pool: str, n: int) -> list[str]:
    ips = [f"10.30.{i // 250}.{i % 250 + 1}" for i in range(n)]
    for ip in ips:
        dns.run(dns.store.register(pool=pool, host=ip, ip=ip, port=80, lease_ttl_ms=600_000))
    wait_until(lambda: len(dns.query(f"{pool}.{ZONE}", "A", tcp=True).rr) == n, timeout=30)
    return ips


def udp(port: int, query: DNSRecord) -> tuple[int, bytes]:
    data = query.pack()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(data, ("127.0.0.1", port))
        return len(data), sock.recv(65535)


def test_any_and_large_answers_amplify_little(dns: DnsHandle, pool_name: str) -> None:
    ips = register(dns, pool_name, 250)
    name = f"{pool_name}.{ZONE}"
    worst = 0.0
    for qtype in ("ANY", "A"):
        for edns in (None, 4096):
            query = DNSRecord.question(name, qtype)
            if edns:
                query.add_ar(EDNS0(udp_len=edns))
            sent, raw = udp(dns.port, query)
            reply = DNSRecord.parse(raw)
            assert len(raw) <= 1232
            worst = max(worst, len(raw) / sent)
            if qtype == "ANY":
                assert [QTYPE.get(r.rtype) for r in reply.rr] == ["HINFO"]
            else:
                assert reply.header.tc == 1 and reply.rr == []
    # Nothing answers more than twice the query's size over UDP.
    assert worst < 2.0, worst
    # The whole answer is there over TCP.
    assert answers(dns.query(name, "A", tcp=True), "A") == sorted(ips)


def flood(port: int, name: str, n: int) -> tuple[int, int, float]:
    """Sends n queries from one socket as fast as it can; returns (full
    answers, truncated replies, seconds)."""
    full = truncated = 0
    done = threading.Event()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(1.0)

        def read() -> None:
            nonlocal full, truncated
            while not done.is_set():
                try:
                    raw = sock.recv(65535)
                except TimeoutError:
                    continue
                if DNSRecord.parse(raw).header.tc:
                    truncated += 1
                else:
                    full += 1

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        start = time.monotonic()
        for i in range(n):
            query = DNSRecord.question(name, "A")
            query.header.id = i
            sock.sendto(query.pack(), ("127.0.0.1", port))
            if i % 20 == 19:
                time.sleep(0.002)  # so the responder's socket buffer keeps up
        elapsed = time.monotonic() - start
        time.sleep(1.5)  # the last replies arrive
        done.set()
        reader.join(timeout=5)
    return full, truncated, elapsed


def test_a_flood_from_one_network_is_answered_at_its_rate(dns_factory, pool_name: str) -> None:  # type: ignore[no-untyped-def]
    dns = dns_factory(rate_limit=50, rate_limit_burst=100, rate_limit_slip=2)
    register(dns, pool_name, 3)
    time.sleep(100 / 50)  # the bucket refills after the registration's queries
    before = (
        metrics.REGISTRY.get_sample_value("lookaside_dns_rate_limited_total", {"action": "dropped"})
        or 0.0
    )
    full, truncated, elapsed = flood(dns.port, f"{pool_name}.{ZONE}", 1000)
    allowed = 100 + 50 * (elapsed + 1.5) + 1
    assert full <= allowed, (full, elapsed)
    # Every second query over the limit slips through truncated, the rest
    # are dropped: far fewer than 1,000 replies in all.
    assert 0 < truncated <= (1000 - full) // 2 + 1
    assert full + truncated < 700
    dropped = metrics.REGISTRY.get_sample_value(
        "lookaside_dns_rate_limited_total", {"action": "dropped"}
    )
    assert dropped is not None and dropped - before >= truncated - 1
    # TCP cannot be forged and is not limited: the same client is answered.
    assert dns.query(f"{pool_name}.{ZONE}", "A", tcp=True).rr


@pytest.mark.parametrize(
    ("host", "network"),
    [
        ("192.0.2.77", "192.0.2.0/24"),
        ("::ffff:192.0.2.77", "192.0.2.0/24"),
        ("2001:db8:aa:bb01::1", "2001:db8:aa:bb00::/56"),
        ("2001:db8:aa:bbff:1::1", "2001:db8:aa:bb00::/56"),
    ],
)
def test_source_networks(host: str, network: str) -> None:
    assert source_network(host) == network


def test_buckets_refill_and_slip() -> None:
    now = [0.0]
    limit = ResponseRateLimit(rate=10, burst=3, slip=2, clock=lambda: now[0])
    verdicts = [limit.admit("192.0.2.1") for _ in range(7)]
    A, S, D = Verdict.ANSWER, Verdict.SLIP, Verdict.DROP
    assert verdicts == [A, A, A, D, S, D, S]
    # Another host of the same /24 shares the bucket; another /24 does not.
    assert limit.admit("192.0.2.200") is D
    assert limit.admit("192.0.3.1") is A
    now[0] += 0.1  # one answer's worth of refill
    assert [limit.admit("192.0.2.1") for _ in range(3)] == [A, D, S]
    off = ResponseRateLimit(rate=0, burst=1)
    assert all(off.admit("192.0.2.1") is A for _ in range(100))


def test_a_stock_client_gets_a_truncated_answer_whole_over_tcp(
    dns: DnsHandle, pool_name: str
) -> None:
    # 120 A records (about 2 KB) do not fit 1,232 bytes: grpcio's c-ares
    # resolver gets TC over UDP, asks again over TCP and reaches the one
    # live backend among them (the others are loopback addresses where
    # nothing listens).
    from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
    from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
    from tests.support import RouteGuideBackend

    live = RouteGuideBackend("live").start()
    try:
        hosts = ["127.0.0.1"] + [f"127.0.1.{i}" for i in range(1, 120)]
        for ip in hosts:
            dns.run(
                dns.store.register(
                    pool=pool_name, host=ip, ip=ip, port=live.port, lease_ttl_ms=600_000
                )
            )
        name = f"{pool_name}.{ZONE}"
        wait_until(lambda: len(dns.query(name, "A", tcp=True).rr) == 120, timeout=30)
        query = DNSRecord.question(name, "A")
        query.add_ar(EDNS0(udp_len=4096))
        assert DNSRecord.parse(udp(dns.port, query)[1]).header.tc == 1
        options = [
            ("grpc.service_config", '{"loadBalancingConfig":[{"round_robin":{}}]}'),
            ("grpc.dns_enable_srv_queries", 0),
        ]
        target = f"dns://127.0.0.1:{dns.port}/{name}:{live.port}"

        def over_tcp() -> float:
            labels = {"transport": "tcp", "qtype": "A", "rcode": "NOERROR"}
            return metrics.REGISTRY.get_sample_value("lookaside_dns_queries_total", labels) or 0.0

        before = over_tcp()
        with grpc.insecure_channel(target, options=options) as channel:
            stub = rg_grpc.RouteGuideStub(channel)
            stub.GetFeature(rg.Point(), timeout=20, wait_for_ready=True)
        assert live.calls == 1
        assert over_tcp() > before  # the client's own retry over TCP
    finally:
        live.stop()
