"""mTLS identities mean what they say: hostile client certificates, signed
by the balancer's own client CA, try to pass for a routeguide backend and
are refused by a real balancer; the pattern rules themselves are tested
without a socket below."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from balancer_server.auth import PolicyError, RegistrationPolicy
from balancer_server.identity import IdentityPattern, PeerNames, peer_names
from lookaside.certs import Issued, issue, issue_client
from lookaside_proto.registry.v1 import registry_pb2 as pb
from lookaside_proto.registry.v1 import registry_pb2_grpc as pb_grpc
from lookaside_registry import keys
from lookaside_registry.model import PoolConfig
from tests.support import BalancerHandle

ZONE = "lookaside.test"
SPIFFE_RG = "spiffe://lookaside.test/ns/routeguide"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Issued:
    return issue(tmp_path_factory.mktemp("certs"), zone=ZONE)


@pytest.fixture
def balancer(
    redis_url: str, certs: Issued, tmp_path: Path, pool_name: str
) -> Iterator[BalancerHandle]:
    policy = tmp_path / "policy.json"
    identities = [f"routeguide-*.{ZONE}", f"{SPIFFE_RG}/*", "spiffe://lookaside.test/exact"]
    policy.write_text(json.dumps({"pools": {pool_name: {"identities": identities}}}))
    handle = BalancerHandle(
        redis_url,
        tls_cert=str(certs.server_cert),
        tls_key=str(certs.server_key),
        tls_client_ca=str(certs.ca),
        insecure_registration=False,
        registration_policy=str(policy),
    )
    handle.run(handle.store.put_pool(PoolConfig(name=pool_name)))
    yield handle
    handle.stop()


def register_with(
    balancer: BalancerHandle, certs: Issued, pool: str, name: str, port: int, **sans: object
) -> grpc.StatusCode:
    cert, key = issue_client(certs.ca.parent, name, **sans)  # type: ignore[arg-type]
    creds = grpc.ssl_channel_credentials(certs.ca.read_bytes(), key.read_bytes(), cert.read_bytes())
    request = pb.RegisterRequest(pool=pool, host="127.0.0.1", port=port)
    with grpc.secure_channel(balancer.address, creds) as channel:
        try:
            pb_grpc.RegistryStub(channel).Register(request, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


HOSTILE = {
    # One '*' is one label: a name one level deeper is someone else.
    "deeper": dict(dns=(f"routeguide-x.billing.{ZONE}",)),
    # The CN does not count when the certificate has SANs.
    "cn-behind-san": dict(cn=f"routeguide-1.{ZONE}", dns=(f"billing-1.{ZONE}",)),
    # E-mail SANs are never identities, even one that reads like the pattern.
    "email": dict(emails=(f"routeguide-1@{ZONE}",)),
    "email-and-cn": dict(cn=f"routeguide-1.{ZONE}", emails=(f"ops@{ZONE}",)),
    # URIs: another scheme, another trust domain, a path that only starts
    # with the same letters, dot segments, and the prefix itself.
    "uri-https": dict(uris=(f"https://routeguide-1.{ZONE}/",)),
    "uri-other-domain": dict(uris=("spiffe://evil.test/ns/routeguide/sa/x",)),
    "uri-sibling": dict(uris=("spiffe://lookaside.test/ns/routeguidex/sa/x",)),
    "uri-dotdot": dict(uris=(f"{SPIFFE_RG}/../billing",)),
    "uri-prefix-itself": dict(uris=(SPIFFE_RG,)),
    "uri-exact-longer": dict(uris=("spiffe://lookaside.test/exact/more",)),
    # A wildcard certificate is a name for many hosts, not an identity.
    "wildcard-san": dict(dns=(f"*.{ZONE}",)),
}


def test_hostile_certificates_are_refused_and_write_nothing(
    balancer: BalancerHandle, certs: Issued, pool_name: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    refused = {
        name: register_with(balancer, certs, pool_name, name, 9600 + i, **sans)
        for i, (name, sans) in enumerate(HOSTILE.items())
    }
    assert refused == dict.fromkeys(HOSTILE, grpc.StatusCode.PERMISSION_DENIED)
    assert redis_client.hlen(keys.backends(pool_name)) == 0


@pytest.mark.parametrize(
    "sans",
    [
        dict(dns=(f"routeguide-1.{ZONE}",)),
        dict(dns=(f"ROUTEGUIDE-2.{ZONE}.",)),
        dict(cn=f"routeguide-3.{ZONE}"),  # no SAN at all: the CN is the name
        dict(uris=(f"{SPIFFE_RG}/sa/server",)),
        dict(uris=("spiffe://lookaside.test/exact",), emails=("x@y.test",)),
        dict(dns=(f"billing-1.{ZONE}",), uris=(f"{SPIFFE_RG}/sa/server",)),
    ],
    ids=["dns", "dns-case-dot", "cn-only", "spiffe-prefix", "spiffe-exact", "any-san-matches"],
)
def test_honest_certificates_register(
    balancer: BalancerHandle, certs: Issued, pool_name: str, redis_client, sans: dict
) -> None:  # type: ignore[no-untyped-def,type-arg]
    assert register_with(balancer, certs, pool_name, "honest", 9700, **sans) is grpc.StatusCode.OK
    assert redis_client.hlen(keys.backends(pool_name)) == 1


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("*.lookaside.test", "a.lookaside.test", True),
        ("*.lookaside.test", "a.b.lookaside.test", False),
        ("*.lookaside.test", "lookaside.test", False),
        ("rg-*-eu.lookaside.test", "rg-1-eu.lookaside.test", True),
        ("rg-*-eu.lookaside.test", "rg-eu.lookaside.test", False),
        ("backend.lookaside.test", "backend.lookaside.test.evil", False),
        ("backend.lookaside.test", "backend_x.lookaside.test", False),
    ],
)
def test_dns_patterns(pattern: str, name: str, expected: bool) -> None:
    assert (IdentityPattern(pattern).matches(PeerNames(dns=(name,))) is not None) is expected


def test_only_dns_and_uri_sans_are_names() -> None:
    context = {
        "x509_common_name": [b"routeguide-1.lookaside.test"],
        "x509_subject_alternative_name": [b"a@b.test", b"127.0.0.2"],
        "peer_email": [b"a@b.test"],
        "peer_ip": [b"127.0.0.2"],
    }
    assert not peer_names(context)
    assert peer_names({"x509_common_name": [b"cn.test"]}) == PeerNames(dns=("cn.test",))


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("https://x.test/a", "only spiffe:// URIs are identities"),
        ("spiffe://x.test/a/../b", "no '.', '..' or empty segments"),
        ("spiffe://x.test/a*", "expected spiffe://"),
        ("spiffe://x.test/a/", "expected spiffe://"),
        ("rg-?.lookaside.test", "at most one '*' per label"),
        ("*", "a wildcard needs a parent domain"),
        ("a**.test", "at most one '*' per label"),
    ],
)
def test_bad_patterns_say_what_is_wrong(pattern: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        RegistrationPolicy.from_data({"pools": {"p": {"identities": [pattern]}}})
    assert message in str(info.value) and "pool 'p'" in str(info.value)
