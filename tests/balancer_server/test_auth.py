"""The registration policy and the development switch: precise errors for
a bad policy or token, and what --insecure-registration does and does not
relax."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grpc
import pytest

from balancer_server import metrics
from balancer_server.auth import (
    AuthError,
    PolicyError,
    RegistrationAuth,
    RegistrationPolicy,
    token_id,
)
from lookaside_proto.registry.v1 import registry_pb2 as pb
from lookaside_proto.registry.v1 import registry_pb2_grpc as pb_grpc
from lookaside_registry import keys
from tests.support import BalancerHandle

TOKEN = "a-registration-token-0123456789"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "expected an object at the top"),
        ({"pool": {}}, "unknown keys ['pool']"),
        ({"pools": {"p": {"token": ["x"]}}}, "unknown keys ['token']"),
        ({"pools": {"p": {"tokens": ["short"]}}}, "at least 16 characters"),
        ({"pools": {"p": {"max_backends": 0}}}, "max_backends must be a positive integer"),
        ({"pools": {"p": {"token_files": ["/nonexistent/x"]}}}, "cannot be read"),
        ({"pools": ["p"]}, "'pools' must map pool names to rules"),
        ({"pools": {"p": {"client_tokens": ["short"]}}}, "every client token needs at least 16"),
        (
            {"pools": {"p": {"require_client_credentials": True}}},
            "require_client_credentials needs client_tokens",
        ),
        (
            {"pools": {"p": {"client_tokens": [TOKEN], "require_client_credentials": "yes"}}},
            "require_client_credentials must be true or false",
        ),
    ],
)
def test_bad_policies_say_what_is_wrong(data: object, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        RegistrationPolicy.from_data(data)
    assert message in str(info.value)


def test_policy_files_json_and_yaml(tmp_path: Path) -> None:
    (tmp_path / "t").write_text(TOKEN + "\n")
    body = {"pools": {"team-*": {"token_files": [str(tmp_path / "t")]}, "team-x": {"create": True}}}
    (tmp_path / "p.json").write_text(json.dumps(body))
    (tmp_path / "p.yaml").write_text(f"pools:\n  team-*:\n    token_files: [{tmp_path / 't'}]\n"
                                     "  team-x:\n    create: true\n")  # fmt: skip
    for name in ("p.json", "p.yaml"):
        policy = RegistrationPolicy.from_file(str(tmp_path / name))
        # An exact name wins over a glob, whatever the order in the file.
        rule = policy.rule_for("team-x")
        assert rule is not None and rule.create and not rule.tokens
        glob = policy.rule_for("team-y")
        assert glob is not None and glob.tokens == (TOKEN.encode(),)
        assert policy.rule_for("other") is None
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(PolicyError, match="does not parse"):
        RegistrationPolicy.from_file(str(tmp_path / "bad.json"))


LOOPBACK = "ipv4:127.0.0.1:5000"  # a trusted network: tokens in plaintext are fine


def test_pool_tokens_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """token_env: a container gets its pool's token as a variable from a
    secret; an unset one stops the balancer at start with its name."""
    data = {"pools": {"rg": {"token_env": ["RG_REGISTRATION_TOKEN"]}}}
    monkeypatch.delenv("RG_REGISTRATION_TOKEN", raising=False)
    with pytest.raises(PolicyError, match="RG_REGISTRATION_TOKEN .token_env. is not set"):
        RegistrationPolicy.from_data(data)
    monkeypatch.setenv("RG_REGISTRATION_TOKEN", "short")
    with pytest.raises(PolicyError, match="at least 16 characters"):
        RegistrationPolicy.from_data(data)
    monkeypatch.setenv("RG_REGISTRATION_TOKEN", TOKEN + "\n")
    auth = RegistrationAuth(RegistrationPolicy.from_data(data))
    bearer = [("authorization", f"Bearer {TOKEN}")]
    assert auth.authorize("rg", bearer, peer=LOOPBACK).principal.startswith("pool-token:rg#")
    with pytest.raises(AuthError) as info:
        auth.authorize("other", bearer, peer=LOOPBACK)
    assert info.value.code is grpc.StatusCode.PERMISSION_DENIED  # a token, of another pool


def test_client_credentials_decide_whose_reports_may_eject() -> None:
    ident = {
        "peer_dns": [b"client-1.lookaside.test"],
        "x509_subject_alternative_name": [b"client-1.lookaside.test"],
    }
    policy = RegistrationPolicy.from_data(
        {
            "pools": {
                "strict": {
                    "client_tokens": [TOKEN],
                    "client_identities": ["client-*.lookaside.test"],
                    "require_client_credentials": True,
                },
                "loose": {"client_tokens": [TOKEN]},
                "open": {"tokens": [TOKEN]},
            }
        }
    )
    auth = RegistrationAuth(policy)
    bearer = [("authorization", f"Bearer {TOKEN}")]
    assert auth.client_principal("strict", bearer, peer=LOOPBACK) == "client-token:strict"
    # A client token over plaintext from an untrusted network is refused, as
    # a registration token is.
    with pytest.raises(AuthError) as plain:
        auth.client_principal("strict", bearer, peer="ipv4:10.1.2.3:5000")
    assert plain.value.reason == "token_over_plaintext" and "client tokens" in str(plain.value)
    assert auth.client_principal("strict", [], ident) == "mtls:client-1.lookaside.test"
    assert auth.client_principal("strict", []) is None  # shown, never evidence
    assert auth.client_principal("loose", []) == "anonymous"
    # A pool with no client credentials: every stream counts, any token.
    assert (
        auth.client_principal("open", [("authorization", "Bearer whatever")], peer=LOOPBACK)
        == "anonymous"
    )
    with pytest.raises(AuthError) as info:
        auth.client_principal("strict", [("authorization", "Bearer " + "x" * 20)], peer=LOOPBACK)
    assert info.value.code is grpc.StatusCode.UNAUTHENTICATED


def test_insecure_switch_admits_no_credential_but_still_checks_one_given() -> None:
    auth = RegistrationAuth(RegistrationPolicy(), [TOKEN], insecure=True)
    grant = auth.authorize("new-pool", [])
    assert grant.principal == "insecure" and grant.create
    peer = "ipv4:127.0.0.1:5000"
    bearer = [("authorization", f"Bearer {TOKEN}")]
    assert auth.authorize("new-pool", bearer, peer=peer).principal == (
        f"global-token#{token_id(TOKEN.encode())}"
    )
    with pytest.raises(AuthError) as info:
        auth.authorize("new-pool", [("authorization", "Bearer wrong-wrong-wrong-wrong")], peer=peer)
    assert info.value.code is grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        ("ipv4:127.0.0.1:5000", True),
        ("ipv6:%5B::1%5D:5000", True),
        ("ipv6:[::ffff:127.0.0.9]:5000", True),
        ("unix:/run/lookaside.sock", True),
        ("ipv4:10.1.2.3:5000", False),
        ("ipv6:[fd00::2]:5000", False),
        ("", False),
        ("garbage", False),
    ],
)
def test_tokens_over_plaintext_only_from_trusted_networks(peer: str, trusted: bool) -> None:
    auth = RegistrationAuth(RegistrationPolicy(), [TOKEN])
    bearer = [("authorization", f"Bearer {TOKEN}")]
    if trusted:
        assert auth.authorize("p", bearer, peer=peer).principal.startswith("global-token#")
        return
    with pytest.raises(AuthError) as info:
        auth.authorize("p", bearer, peer=peer)
    assert info.value.reason == "token_over_plaintext"
    # Over TLS the same token from the same peer is fine.
    tls = {"transport_security_type": [b"ssl"]}
    assert auth.authorize("p", bearer, tls, peer=peer).principal.startswith("global-token#")


def test_insecure_balancer_says_so(
    redis_url: str, pool_name: str, redis_client, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="lookaside.balancer")
    handle = BalancerHandle(redis_url, insecure_registration=True)
    try:
        assert any("INSECURE REGISTRATION" in r.getMessage() for r in caplog.records)
        assert metrics.REGISTRY.get_sample_value("lookaside_balancer_insecure_registration") == 1
        with grpc.insecure_channel(handle.address) as channel:
            pb_grpc.RegistryStub(channel).Register(
                pb.RegisterRequest(pool=pool_name, host="127.0.0.1", port=9700), timeout=5
            )
        assert redis_client.hlen(keys.backends(pool_name)) == 1
    finally:
        handle.stop()


def test_balancer_refuses_to_start_with_a_weak_token(redis_url: str) -> None:
    with pytest.raises(PolicyError, match="at least 16 characters"):
        BalancerHandle(redis_url, insecure_registration=False, registration_token="short")
