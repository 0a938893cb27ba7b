"""DNS answers for the zone, built from pool snapshots: pure, no sockets.

Names, relative to the zone:

    _grpclb._tcp.<pool>   SRV      one per advertised balancer replica
    <pool>                A/AAAA   the pool's serving backends (stock clients'
                                   fallback addresses)
    _grpc_config.<pool>   TXT      grpc_config=[{"serviceConfig": ...}] when a
                                   service config is set
    lb-<i>                A/AAAA   a balancer replica that was given by IP
    (apex)                SOA

A name in the zone that exists but has no record of the asked type gets
NOERROR with an empty answer; an unknown pool gets NXDOMAIN. Both carry the
SOA in the authority section, so resolvers cache the miss for `ttl` only.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dnslib import AAAA, EDNS0, QTYPE, RCODE, RR, SOA, SRV, TXT, A, DNSHeader, DNSLabel, DNSRecord
from dnslib.dns import RD

from lookaside_registry.model import PoolSnapshot

CLASS_IN = 1
CLASS_ANY = 255
UDP_MIN = 512
# The most we send over UDP whatever EDNS size the asker offers (the DNS
# flag day 2020 size: no fragmentation, and little to amplify); larger
# answers go out truncated, and the asker retries over TCP.
UDP_MAX = 1232
TCP_MAX = 65535
# RFC 8482: ANY is answered with one synthesized HINFO record, not every
# record at the name (which made a 51 B query a 911 B answer).
ANY_HINFO = b"\x07RFC8482\x00"
EDNS_UDP_SIZE = 1232  # the size we advertise, as most resolvers now do
TXT_CHUNK = 255


@dataclass(frozen=True, slots=True)
class Target:
    """One advertised balancer replica: the SRV target and its addresses."""

    name: str  # lower case, without the final dot
    port: int
    addresses: tuple[str, ...] = ()


def advertise(
    balancers: Sequence[tuple[str, int]],
    zone: str,
    resolved: Mapping[str, Sequence[str]] | None = None,
) -> tuple[Target, ...]:
    """SRV targets for the balancers: an IP becomes the name lb-<i>.<zone>
    (answered here), a host name stays as it is with the addresses that
    `resolved` knows for it."""
    resolved = resolved or {}
    out = []
    for i, (host, port) in enumerate(balancers):
        try:
            ip = str(ipaddress.ip_address(host))
        except ValueError:
            name = host.lower().rstrip(".")
            out.append(Target(name, port, tuple(resolved.get(name, ()))))
        else:
            out.append(Target(f"lb-{i}.{zone}", port, (ip,)))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class ZoneView:
    """Everything an answer depends on, at one moment."""

    zone: str
    ttl: int
    targets: tuple[Target, ...]
    pools: Mapping[str, PoolSnapshot]
    serial: int = 1
    service_config: str = ""  # compact JSON; empty: no TXT record
    ready: bool = True  # False until the registry was read once: SERVFAIL, not NXDOMAIN

    def find_pool(self, name: str) -> PoolSnapshot | None:
        """Pool names are case-sensitive in the registry, DNS names are not:
        an exact match wins, else a case-insensitive one."""
        snap = self.pools.get(name)
        if snap is not None:
            return snap
        wanted = name.lower()
        for pool_name, snap in self.pools.items():
            if pool_name.lower() == wanted:
                return snap
        return None


def _address_rrs(name: DNSLabel | str, addresses: Sequence[str], ttl: int) -> list[RR]:
    out = []
    for text in dict.fromkeys(addresses):
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            continue
        if ip.version == 4:
            out.append(RR(name, QTYPE.A, rdata=A(str(ip)), ttl=ttl))
        else:
            out.append(RR(name, QTYPE.AAAA, rdata=AAAA(str(ip)), ttl=ttl))
    return out


def soa_rr(view: ZoneView) -> RR:
    zone = view.zone
    times = (view.serial % 2**32, 60, 10, 3600, view.ttl)
    rdata = SOA(mname=f"ns.{zone}", rname=f"hostmaster.{zone}", times=times)
    return RR(zone, QTYPE.SOA, rdata=rdata, ttl=view.ttl)


def grpc_config_txt(service_config: str) -> TXT:
    """The TXT gRPC reads: one record, split in 255-byte strings that the
    client joins again."""
    data = f'grpc_config=[{{"serviceConfig":{service_config}}}]'.encode()
    return TXT([data[i : i + TXT_CHUNK] for i in range(0, len(data), TXT_CHUNK)])


@dataclass(slots=True)
class Node:
    """The records that exist at one name."""

    records: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)


def lookup(qname: DNSLabel, relative: list[str], view: ZoneView) -> Node | None:
    """The node at a name inside the zone, or None when it does not exist.
    `relative` holds the labels in front of the zone, as asked."""
    ttl = view.ttl
    if not relative:
        return Node([soa_rr(view)])
    lowered = [label.lower() for label in relative]
    joined = ".".join(lowered) + "." + view.zone
    for target in view.targets:
        if target.name == joined:
            return Node(_address_rrs(qname, target.addresses, ttl))
    if lowered[:2] == ["_grpclb", "_tcp"] and len(relative) > 2:
        if view.find_pool(".".join(relative[2:])) is None:
            return None
        node = Node()
        for target in view.targets:
            rdata = SRV(priority=0, weight=0, port=target.port, target=target.name + ".")
            node.records.append(RR(qname, QTYPE.SRV, rdata=rdata, ttl=ttl))
            node.additional.extend(_address_rrs(target.name, target.addresses, ttl))
        return node
    if lowered[0] == "_tcp" and len(relative) > 1:
        # An empty non-terminal above the SRV name: it exists, with no records.
        return Node() if view.find_pool(".".join(relative[1:])) is not None else None
    if lowered[0] == "_grpc_config" and len(relative) > 1:
        if view.find_pool(".".join(relative[1:])) is None:
            return None
        if not view.service_config:
            return Node()
        return Node([RR(qname, QTYPE.TXT, rdata=grpc_config_txt(view.service_config), ttl=ttl)])
    snap = view.find_pool(".".join(relative))
    if snap is None:
        return None
    return Node(_address_rrs(qname, [b.ip for b in snap.serving], ttl))


def _labels(request: DNSRecord) -> list[str] | None:
    try:
        return [label.decode("ascii") for label in request.q.qname.label]
    except UnicodeDecodeError:
        return None


def answer(request: DNSRecord, view: ZoneView) -> DNSRecord:
    """The reply to one parsed query."""
    header = DNSHeader(id=request.header.id, qr=1, aa=1, ra=0, rd=request.header.rd)
    header.opcode = request.header.opcode
    reply = DNSRecord(header)
    if any(r.rtype == QTYPE.OPT for r in request.ar):
        reply.add_ar(EDNS0(udp_len=EDNS_UDP_SIZE))
    if request.header.opcode != 0:
        header.rcode = RCODE.NOTIMP
        return reply
    if len(request.questions) != 1:
        header.rcode = RCODE.FORMERR
        return reply
    question = request.q
    reply.add_question(question)
    labels = _labels(request)
    zone_labels = view.zone.split(".")
    n = len(zone_labels)
    if labels is None or len(labels) < n or [x.lower() for x in labels[-n:]] != zone_labels:
        header.aa = 0
        header.rcode = RCODE.NXDOMAIN
        return reply
    if question.qclass not in (CLASS_IN, CLASS_ANY):
        header.rcode = RCODE.REFUSED
        return reply
    node = lookup(question.qname, labels[:-n], view)
    if node is None:
        header.rcode = RCODE.NXDOMAIN if view.ready else RCODE.SERVFAIL
        reply.add_auth(soa_rr(view))
        return reply
    qtype = question.qtype
    if qtype == QTYPE.ANY and node.records:
        reply.add_answer(RR(question.qname, QTYPE.HINFO, rdata=RD(ANY_HINFO), ttl=view.ttl))
        return reply
    matching = [r for r in node.records if r.rtype == qtype]
    if not matching:
        reply.add_auth(soa_rr(view))
        return reply
    reply.add_answer(*matching)
    if any(r.rtype == QTYPE.SRV for r in matching):
        reply.add_ar(*node.additional)
    return reply


def udp_limit(request: DNSRecord | None) -> int:
    """The largest UDP reply we send the asker: 512, or its EDNS size up to
    UDP_MAX."""
    if request is not None:
        for r in request.ar:
            if r.rtype == QTYPE.OPT:
                return max(UDP_MIN, min(int(r.rclass), UDP_MAX))
    return UDP_MIN


def encode(reply: DNSRecord, limit: int) -> bytes:
    """The wire form of a reply; one that does not fit is sent as the
    question alone with TC set, so the asker retries over TCP."""
    data = reply.pack()
    if len(data) <= limit:
        return data
    header = DNSHeader(id=reply.header.id, qr=1, aa=reply.header.aa, ra=0, rd=reply.header.rd)
    header.tc = 1
    short = DNSRecord(header, questions=list(reply.questions))
    short.ar = [r for r in reply.ar if r.rtype == QTYPE.OPT]
    short.set_header_qa()
    return short.pack()


def error_reply(data: bytes, rcode: int = RCODE.FORMERR) -> bytes | None:
    """A bare error reply (FORMERR by default) to a packet that could not be
    parsed or answered, or None when it is too short to carry an id or is
    itself a response (never answer those)."""
    if len(data) < 12:
        return None
    msg_id, flags = struct.unpack("!HH", data[:4])
    if flags & 0x8000:
        return None
    reply_flags = 0x8000 | (flags & 0x7800) | (flags & 0x0100) | (rcode & 0xF)
    return struct.pack("!HHHHHH", msg_id, reply_flags, 0, 0, 0, 0)
