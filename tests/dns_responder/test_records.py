"""Pure pieces: settings parsing and record building, without sockets."""

from __future__ import annotations

import json

import pytest
from dnslib import QTYPE, RCODE, DNSRecord
from pydantic import ValidationError

from dns_responder.records import (
    Target,
    ZoneView,
    advertise,
    answer,
    error_reply,
    grpc_config_txt,
)
from dns_responder.settings import DnsSettings, parse_balancers
from lookaside_registry.model import Backend, PoolConfig, PoolSnapshot


def test_parse_balancers_accepts_ips_and_names() -> None:
    assert parse_balancers("127.0.0.1:50051, lb.Example.com:443,[::1]:9") == [
        ("127.0.0.1", 50051),
        ("lb.example.com", 443),
        ("::1", 9),
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "balancers is empty"),
        ("127.0.0.1", "has no port"),
        ("::1:80", "in brackets"),
        ("host:99999", "not a number in 0..65535"),
        ("host:0", "port 0 cannot be advertised"),
        ("bad host!:80", "is not a host name or an IP address"),
    ],
)
def test_bad_balancers_are_refused_with_a_reason(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_balancers(spec)


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKASIDE_DNS_ZONE", "Svc.Example.")
    monkeypatch.setenv("LOOKASIDE_DNS_BALANCERS", "10.0.0.1:1,10.0.0.2:2")
    settings = DnsSettings()
    assert settings.zone == "svc.example"
    assert settings.balancer_addresses() == [("10.0.0.1", 1), ("10.0.0.2", 2)]
    assert all(f.description for f in DnsSettings.model_fields.values())
    with pytest.raises(ValidationError, match="service_config must be a JSON object"):
        DnsSettings(service_config="[1]")


def test_advertise_names_ip_balancers_inside_the_zone() -> None:
    targets = advertise(
        [("10.0.0.9", 1), ("lb.example.com", 2)], "z.test", {"lb.example.com": ["10.1.1.1"]}
    )
    assert targets == (
        Target("lb-0.z.test", 1, ("10.0.0.9",)),
        Target("lb.example.com", 2, ("10.1.1.1",)),
    )


def test_a_long_service_config_is_split_into_255_byte_strings() -> None:
    config = json.dumps({"loadBalancingConfig": [{"grpclb": {"serviceName": "x" * 600}}]})
    txt = grpc_config_txt(config)
    assert len(txt.data) == 3
    assert all(len(part) <= 255 for part in txt.data)
    joined = b"".join(txt.data).decode()
    assert json.loads(joined.removeprefix("grpc_config="))[0]["serviceConfig"] == json.loads(config)


def test_any_query_is_answered_with_one_hinfo_record() -> None:
    backend = Backend(id="b", pool="p", host="h", ip="10.0.0.1", port=1)
    v6 = Backend(id="c", pool="p", host="h", ip="fd00::1", port=1)
    view = ZoneView(
        zone="z.test",
        ttl=3,
        targets=advertise([("10.0.0.9", 1)], "z.test"),
        pools={"p": PoolSnapshot("p", 1, PoolConfig("p"), (backend, v6))},
    )
    reply = answer(DNSRecord.question("p.z.test", "ANY"), view)
    # RFC 8482: not every record of the name (an amplifier's dream), one HINFO.
    assert [QTYPE.get(r.rtype) for r in reply.rr] == ["HINFO"]
    assert reply.rr[0].rdata.data == b"\x07RFC8482\x00"
    # A name that does not exist is still NXDOMAIN.
    assert answer(DNSRecord.question("q.z.test", "ANY"), view).header.rcode == RCODE.NXDOMAIN
    not_ready = ZoneView(zone="z.test", ttl=3, targets=view.targets, pools={}, ready=False)
    assert answer(DNSRecord.question("p.z.test", "A"), not_ready).header.rcode == RCODE.SERVFAIL


def test_error_reply_keeps_the_id_and_never_answers_a_response() -> None:
    query = DNSRecord.question("p.z.test").pack()
    reply = error_reply(query, RCODE.SERVFAIL)
    assert reply is not None
    parsed = DNSRecord.parse(reply)
    assert parsed.header.id == DNSRecord.parse(query).header.id
    assert parsed.header.rcode == RCODE.SERVFAIL and parsed.header.qr == 1
    assert error_reply(reply) is None
    assert error_reply(b"short") is None
