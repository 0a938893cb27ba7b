"""The sockets: malformed input, truncation over UDP, several queries on
one TCP connection."""

from __future__ import annotations

import logging
import socket
import struct

import pytest
from dnslib import EDNS0, DNSRecord

from lookaside_registry.model import PoolConfig
from tests.dns_responder.dns_handle import ZONE, DnsHandle, answers, rcode
from tests.support import wait_until


def udp_exchange(port: int, payload: bytes, timeout: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(payload, ("127.0.0.1", port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def read_frame(sock: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    (length,) = struct.unpack("!H", exactly(2))
    return exactly(length)


def test_malformed_packets_get_formerr_or_nothing_and_do_no_harm(
    dns: DnsHandle, pool_name: str
) -> None:
    # A header that claims a question which is not there: FORMERR with its id.
    garbage = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x07trunc"
    reply = udp_exchange(dns.port, garbage)
    assert reply is not None
    msg_id, flags = struct.unpack("!HH", reply[:4])
    assert msg_id == 0x1234
    assert flags & 0x8000 and flags & 0xF == 1  # a response, FORMERR
    # Too short to carry an id, and a packet that is itself a response: silence.
    assert udp_exchange(dns.port, b"\x00\x01\x02", timeout=0.3) is None
    response = DNSRecord.question("x.lookaside.test").reply().pack()
    assert udp_exchange(dns.port, response, timeout=0.3) is None
    # Junk after a query header over TCP: FORMERR, and the connection still serves.
    junk = struct.pack("!HHHHHH", 0xABCD, 0x0100, 3, 7, 0, 0) + bytes(range(200, 230))
    with socket.create_connection(("127.0.0.1", dns.port), timeout=5) as sock:
        sock.sendall(struct.pack("!H", len(junk)) + junk)
        reply = read_frame(sock)
        assert struct.unpack("!HH", reply[:4]) == (0xABCD, 0x8101)
        query = DNSRecord.question(f"lb-0.{ZONE}", "A")
        sock.sendall(struct.pack("!H", len(query.pack())) + query.pack())
        assert answers(DNSRecord.parse(read_frame(sock)), "A") == ["127.0.0.1"]
    dns.run(dns.store.put_pool(PoolConfig(name=pool_name)))
    wait_until(lambda: rcode(dns.query(f"{pool_name}.{ZONE}", "A")) == "NOERROR")
    assert rcode(dns.query(f"{pool_name}.{ZONE}", "A", tcp=True)) == "NOERROR"


def test_question_name_over_255_bytes_is_formerr_without_an_error_logged(
    dns: DnsHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """Labels of 63 bytes each parse, but five make a name no DNS message
    may carry (RFC 1035 3.1): FORMERR, as for any malformed query, and no
    traceback per packet in the log."""
    name = b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\x00"
    query = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01"
    with caplog.at_level(logging.INFO, logger="lookaside.dns"):
        reply = udp_exchange(dns.port, query)
    assert reply is not None
    assert struct.unpack("!HH", reply[:4]) == (0x4242, 0x8101)  # a response, FORMERR
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_several_queries_on_one_tcp_connection(dns: DnsHandle, pool_name: str) -> None:
    dns.run(dns.store.put_pool(PoolConfig(name=pool_name)))
    wait_until(lambda: rcode(dns.query(f"{pool_name}.{ZONE}", "A")) == "NOERROR")
    with socket.create_connection(("127.0.0.1", dns.port), timeout=5) as sock:
        questions = [
            DNSRecord.question(f"_grpclb._tcp.{pool_name}.{ZONE}", "SRV"),
            DNSRecord.question(f"lb-0.{ZONE}", "A"),
            DNSRecord.question("elsewhere.example", "A"),
        ]
        for q in questions:
            data = q.pack()
            sock.sendall(struct.pack("!H", len(data)) + data)
        replies = [DNSRecord.parse(read_frame(sock)) for _ in questions]
    assert [r.header.id for r in replies] == [q.header.id for q in questions]
    assert answers(replies[0], "SRV") == [f"0 0 50051 lb-0.{ZONE}."]
    assert answers(replies[1], "A") == ["127.0.0.1"]
    assert rcode(replies[2]) == "NXDOMAIN"


def test_large_answers_are_truncated_over_udp_and_whole_over_tcp(
    dns: DnsHandle, pool_name: str
) -> None:
    ips = [f"10.20.{i // 250}.{i % 250 + 1}" for i in range(120)]
    for ip in ips:
        dns.run(dns.store.register(pool=pool_name, host=ip, ip=ip, port=80, lease_ttl_ms=600_000))
    wait_until(lambda: len(dns.query(f"{pool_name}.{ZONE}", "A", tcp=True).rr) == len(ips))
    name = f"{pool_name}.{ZONE}"
    udp = dns.query(name, "A")
    assert udp.header.tc == 1
    assert udp.rr == []
    assert str(udp.q.qname) == name + "."
    # An EDNS asker with room for 4096 bytes gets no more than 1,232 over
    # UDP: truncated; the whole answer comes over TCP.
    big = DNSRecord.question(name, "A")
    big.add_ar(EDNS0(udp_len=4096))
    raw = big.send("127.0.0.1", dns.port, timeout=5.0)
    assert len(raw) <= 1232
    assert DNSRecord.parse(raw).header.tc == 1
    assert answers(dns.query(name, "A", tcp=True), "A") == sorted(ips)
