"""Hypothesis properties: registration validation never lets through what
it must not, and any registry state gives a valid ServerList."""

from __future__ import annotations

import ipaddress
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balancer_server import lists
from lookaside_proto.lb.v1 import load_balancer_pb2 as lb
from lookaside_registry import validation as v
from lookaside_registry.model import Backend, BackendState, DropRate, PoolConfig, PoolSnapshot

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STRICT_POOL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)


@FAST
@given(st.one_of(st.text(max_size=140), st.from_regex(v.POOL_NAME_RE, fullmatch=False)))
def test_pool_names_are_whole_string_matches(name: str) -> None:
    try:
        out = v.check_pool_name(name)
    except v.RegistryError as exc:
        assert len(str(exc)) < 300
        return
    assert out == name and STRICT_POOL.fullmatch(name)


HOSTS = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda a: f"{a}%{'x'}"),
    st.text(max_size=80),
    st.from_regex(r"\A[a-z0-9.%:-]{1,40}\Z"),
    st.sampled_from(["169.254.169.254", "255.255.255.255", "224.0.0.251", "::", "0.0.0.0",
                     "::ffff:169.254.169.254", "fe80::1%eth0", "[fe80::1]", "ff02::1"]),
)  # fmt: skip


def listable(host: str) -> str:
    """The registration path's checks of an explicit host, without DNS."""
    ip = v.parse_ip(host)
    if ip is None:
        v.check_hostname_syntax(host)
        return host
    return v.check_listable_ip(ip)


@FAST
@given(HOSTS)
def test_hosts_accepted_are_plain_unicast_or_names(host: str) -> None:
    try:
        out = listable(host)
    except v.RegistryError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 300
        return
    assert "%" not in out and "\n" not in out
    try:
        addr = ipaddress.ip_address(out)
    except ValueError:
        assert v.HOSTNAME_RE.fullmatch(out)
        return
    mapped = getattr(addr, "ipv4_mapped", None) or addr
    assert not (mapped.is_multicast or mapped.is_link_local or mapped.is_unspecified)
    assert str(mapped) != "255.255.255.255"


@FAST
@given(st.dictionaries(st.text(max_size=70), st.text(max_size=300), max_size=20))
def test_metadata_accepted_is_bounded(metadata: dict[str, str]) -> None:
    try:
        out = v.check_metadata(metadata)
    except v.RegistryError:
        return
    assert len(out) <= v.METADATA_MAX_ENTRIES
    assert sum(len(k.encode()) + len(x.encode()) for k, x in out.items()) <= v.METADATA_MAX_BYTES
    assert all(v.METADATA_KEY_RE.fullmatch(k) for k in out)
    assert not any(c in x for x in out.values() for c in "\r\n\x00")


backend = st.builds(
    lambda ip, port, weight, state, latency: Backend(
        id=f"{abs(hash((ip, port))) % (1 << 48):012x}", pool="p", host=str(ip), ip=str(ip),
        port=port, weight=weight, state=state, latency_published_ms=latency,
    ),
    st.ip_addresses(), st.integers(1, 65535), st.integers(1, 1000),
    st.sampled_from(list(BackendState)), st.sampled_from([0.0, 1.0, 5.0, 80.0, 1000.0]),
)  # fmt: skip
drops = st.lists(
    st.builds(DropRate, st.from_regex(r"\A[a-z][a-z0-9_]{0,31}\Z"), st.integers(0, 600)),
    max_size=3,
    unique_by=lambda d: d.token,
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(backend, max_size=12, unique_by=lambda b: (b.ip, b.port)),
    drops,
    st.sampled_from(["round_robin", "least_loaded"]),
    st.from_regex(r"\A[0-9a-z]{1,9}\Z"),
)
def test_any_registry_state_gives_a_valid_server_list(
    backends: list[Backend], drop_rates: list[DropRate], policy: str, epoch: str
) -> None:
    config = PoolConfig(name="p", policy=policy, drops=tuple(drop_rates))
    snapshot = PoolSnapshot(name="p", version=1, config=config, backends=tuple(backends))
    payload = lists.pool_payload(snapshot, epoch)
    listable_backends = [b for b in backends if b.serving or b.state.faulty]
    if listable_backends:
        assert payload is not None  # never nothing, never an empty list
    if payload is None:
        return
    servers = lb.LoadBalanceResponse.FromString(payload).server_list.servers
    assert servers, "an empty list fails every call of a stock client"
    assert len(servers) <= lists.MAX_LIST_LEN
    for s in servers:
        assert len(s.load_balance_token.encode()) < 50
        if s.drop:
            assert s.load_balance_token in {d.token for d in drop_rates}
        else:
            assert len(s.ip_address) in (4, 16)
            assert 1 <= s.port <= 65535
    if sum(d.per_mille for d in drop_rates) < 1000:
        assert any(not s.drop for s in servers)
