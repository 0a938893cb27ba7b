"""Who may register into which pool.

A caller of Register, Heartbeat, Drain or Deregister proves itself with

- a registration token, sent as gRPC metadata `authorization: Bearer <token>`
  (call credentials over TLS, plain metadata over plaintext): the global
  token (`--registration-token`) admits every pool, a pool's own tokens
  (from the policy file) admit that pool only; or
- an mTLS client certificate whose DNS or URI SAN matches one of the pool's
  identity patterns (the policy file; needs `--tls-client-ca`). What counts
  as an identity and how patterns match is in balancer_server/identity.py.

A token is refused over plaintext unless the caller's address is in the
trusted networks (`--trusted-networks`, loopback by default): whoever can
read the wire would otherwise read the token on every heartbeat.

Tokens are compared with hmac.compare_digest. No credential (or a token
that is no token of ours) is UNAUTHENTICATED; a credential that is valid
but not for this pool is PERMISSION_DENIED. The development switch
`--insecure-registration` admits callers that bring no credential (and lets
them create pools); a credential that is given is still checked.

The policy file (JSON, or YAML when PyYAML is installed):

    {"create_pools": false,
     "pools": {
       "routeguide": {"tokens": ["..."], "token_files": ["/run/secrets/rg"],
                      "token_env": ["ROUTEGUIDE_REGISTRATION_TOKEN"],
                      "identities": ["routeguide-*.lookaside.test",
                                     "spiffe://lookaside.test/ns/routeguide/*"],
                      "create": true, "allow_special_addresses": false,
                      "max_backends": 100}}}

Pool keys may be fnmatch globs ("team-a-*"); an exact name wins over a glob.
`token_env` names environment variables that hold the pool's tokens (as a
container gets a secret); an unset or empty one is an error.

Clients of a pool (BalanceLoad streams) may bring a credential too, the
same two ways: `authorization: Bearer <client token>` or an mTLS client
certificate matching the pool's `client_identities`. The rule's
`client_tokens` / `client_token_files` / `client_identities` name them, and
`require_client_credentials: true` makes the pool count the reports of
streams without one for display only: they never eject a backend
(docs/security.md). A token that is not one of the pool's client tokens is
refused (UNAUTHENTICATED) before the stream's initial response.
"""

from __future__ import annotations

import fnmatch
import hmac
import ipaddress
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from balancer_server.identity import (
    IdentityPattern,
    IdentityPatternError,
    admitted,
    peer_names,
)
from balancer_server.limits import peer_ip
from lookaside_registry.tokens import token_id
from server_common import settings
from server_common.settings import parse_networks

DEFAULT_MAX_BACKENDS = 1000
DEFAULT_MAX_POOLS = 1000
# Peers that may send a registration token over plaintext.
LOOPBACK = ("127.0.0.0/8", "::1/128")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AuthError(Exception):
    """A refused call: the status to end it with and a message without secrets."""

    def __init__(self, code: grpc.StatusCode, details: str, reason: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.reason = reason


class PolicyError(ValueError):
    """The policy file is unreadable or malformed; the message says where."""


def read_secret(path: str, what: str) -> str:
    """A secret from a file (surrounding whitespace dropped)."""
    try:
        return settings.read_secret(path, f"{what} file")
    except ValueError as exc:
        raise PolicyError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class PoolRule:
    pattern: str
    tokens: tuple[bytes, ...] = ()
    identities: tuple[IdentityPattern, ...] = ()
    create: bool = False
    allow_special_addresses: bool = False
    max_backends: int = DEFAULT_MAX_BACKENDS
    client_tokens: tuple[bytes, ...] = ()
    client_identities: tuple[IdentityPattern, ...] = ()
    require_client_credentials: bool = False

    def matches(self, pool: str) -> bool:
        return fnmatch.fnmatchcase(pool, self.pattern)


def _rule(pattern: str, raw: Any, where: str) -> PoolRule:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: expected an object, got {type(raw).__name__}")
    known = {"tokens", "token_files", "token_env", "identities", "create",
             "allow_special_addresses", "max_backends", "client_tokens", "client_token_files",
             "client_identities", "require_client_credentials"}  # fmt: skip
    unknown = sorted(set(raw) - known)
    if unknown:
        raise PolicyError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    tokens = [str(t) for t in raw.get("tokens", [])]
    tokens += [read_secret(p, f"{where} token") for p in raw.get("token_files", [])]
    for name in raw.get("token_env", []):
        value = os.environ.get(str(name), "").strip()
        if not value:
            raise PolicyError(f"{where}: environment variable {name} (token_env) is not set")
        tokens.append(value)
    if any(len(t) < 16 for t in tokens):
        raise PolicyError(f"{where}: every token needs at least 16 characters")
    client_tokens = [str(t) for t in raw.get("client_tokens", [])]
    client_tokens += [
        read_secret(p, f"{where} client token") for p in raw.get("client_token_files", [])
    ]
    if any(len(t) < 16 for t in client_tokens):
        raise PolicyError(f"{where}: every client token needs at least 16 characters")
    try:
        client_identities = tuple(IdentityPattern(str(i)) for i in raw.get("client_identities", []))
    except IdentityPatternError as exc:
        raise PolicyError(f"{where}: client_identities: {exc}") from None
    require = raw.get("require_client_credentials", False)
    if not isinstance(require, bool):
        raise PolicyError(f"{where}: require_client_credentials must be true or false")
    if require and not (client_tokens or client_identities):
        raise PolicyError(
            f"{where}: require_client_credentials needs client_tokens, client_token_files "
            "or client_identities"
        )
    max_backends = raw.get("max_backends", DEFAULT_MAX_BACKENDS)
    if not isinstance(max_backends, int) or max_backends < 1:
        raise PolicyError(f"{where}: max_backends must be a positive integer")
    try:
        identities = tuple(IdentityPattern(str(i)) for i in raw.get("identities", []))
    except IdentityPatternError as exc:
        raise PolicyError(f"{where}: {exc}") from None
    return PoolRule(
        pattern=pattern,
        tokens=tuple(t.encode() for t in tokens),
        identities=identities,
        create=bool(raw.get("create", False)),
        allow_special_addresses=bool(raw.get("allow_special_addresses", False)),
        max_backends=max_backends,
        client_tokens=tuple(t.encode() for t in client_tokens),
        client_identities=client_identities,
        require_client_credentials=require,
    )


@dataclass(frozen=True, slots=True)
class RegistrationPolicy:
    rules: tuple[PoolRule, ...] = ()
    create_pools: bool = False
    max_pools: int = DEFAULT_MAX_POOLS
    max_backends: int = DEFAULT_MAX_BACKENDS

    @classmethod
    def from_data(cls, data: Any, where: str = "registration policy") -> RegistrationPolicy:
        if not isinstance(data, dict):
            raise PolicyError(f"{where}: expected an object at the top")
        unknown = sorted(set(data) - {"create_pools", "pools", "max_pools", "max_backends"})
        if unknown:
            raise PolicyError(f"{where}: unknown keys {unknown}")
        pools = data.get("pools", {})
        if not isinstance(pools, dict):
            raise PolicyError(f"{where}: 'pools' must map pool names to rules")
        rules = [_rule(str(k), v, f"{where}: pool {k!r}") for k, v in pools.items()]
        # Exact names first, so they win over globs.
        rules.sort(key=lambda r: any(c in r.pattern for c in "*?["))
        return cls(
            rules=tuple(rules),
            create_pools=bool(data.get("create_pools", False)),
            max_pools=int(data.get("max_pools", DEFAULT_MAX_POOLS)),
            max_backends=int(data.get("max_backends", DEFAULT_MAX_BACKENDS)),
        )

    @classmethod
    def from_file(cls, path: str) -> RegistrationPolicy:
        text = read_secret(path, "registration policy")
        try:
            if path.endswith((".yaml", ".yml")):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:  # noqa: BLE001 - any parse error is the file's fault
            raise PolicyError(f"registration policy {path!r} does not parse: {exc}") from None
        return cls.from_data(data, f"registration policy {path!r}")

    def rule_for(self, pool: str) -> PoolRule | None:
        return next((r for r in self.rules if r.matches(pool)), None)


@dataclass(frozen=True, slots=True)
class Grant:
    """An admitted call: who it is (for logs and events, never a secret) and
    what it may do in the pool."""

    principal: str
    create: bool
    allow_special_addresses: bool
    max_backends: int = DEFAULT_MAX_BACKENDS
    # "ip:port" a per-backend token is bound to: the only address it may
    # register (in place of the pool's address_policy).
    address: str = ""


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> bytes | None:
    """The token of `authorization: Bearer <token>`, or None when absent.
    Raises AuthError for an authorization entry of another shape."""
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
        scheme, _, token = raw.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED,
                "authorization metadata must be 'Bearer <registration token>'",
                "malformed_authorization",
            )
        return token.strip()
    return None


def _any_equal(token: bytes, candidates: Sequence[bytes]) -> bool:
    # Every candidate is compared, in constant time each.
    found = False
    for candidate in candidates:
        found |= hmac.compare_digest(token, candidate)
    return found


class RegistrationAuth:
    def __init__(
        self,
        policy: RegistrationPolicy | None = None,
        global_tokens: Sequence[str] = (),
        *,
        insecure: bool = False,
        trusted_networks: Sequence[Network] | None = None,
    ) -> None:
        self.policy = policy or RegistrationPolicy()
        self.global_tokens = tuple(t.encode() for t in global_tokens if t)
        self.insecure = insecure
        self.trusted_networks = tuple(
            parse_networks(LOOPBACK) if trusted_networks is None else trusted_networks
        )

    def _check_transport(
        self,
        auth_context: Mapping[str, Iterable[bytes]] | None,
        peer: str,
        kind: str = "registration",
    ) -> None:
        """A token over plaintext is refused unless the peer is trusted."""
        if b"ssl" in (auth_context or {}).get("transport_security_type", ()):
            return
        if peer.startswith("unix:"):
            return  # a local socket
        ip = peer_ip(peer)
        if ip is not None and any(ip in net for net in self.trusted_networks):
            return
        raise AuthError(
            grpc.StatusCode.UNAUTHENTICATED,
            f"{kind} tokens are refused over plaintext from {ip or 'an unknown peer'}: "
            "connect over TLS, or "
            "have the operator list this network in the balancer's --trusted-networks",
            "token_over_plaintext",
        )

    @property
    def has_credentials(self) -> bool:
        return bool(self.global_tokens) or any(r.tokens or r.identities for r in self.policy.rules)

    def _grant(self, principal: str, rule: PoolRule | None, create: bool | None = None) -> Grant:
        policy = self.policy
        return Grant(
            principal=principal,
            create=(rule.create if rule else policy.create_pools) if create is None else create,
            allow_special_addresses=rule.allow_special_addresses if rule else False,
            max_backends=rule.max_backends if rule else policy.max_backends,
        )

    def backend_token_grant(self, pool: str, token_id_: str, address: str) -> Grant:
        """The grant of a per-backend token of `pool` (lookaside_registry.
        tokens), found by the caller after `authorize` did not know it."""
        rule = self.policy.rule_for(pool)
        return Grant(
            principal=f"backend-token:{token_id_}",
            create=False,
            allow_special_addresses=False,
            max_backends=rule.max_backends if rule else self.policy.max_backends,
            address=address,
        )

    def authorize(
        self,
        pool: str,
        metadata: Iterable[tuple[str, str | bytes]] | None,
        auth_context: Mapping[str, Iterable[bytes]] | None = None,
        peer: str = "",
    ) -> Grant:
        """The grant for a call into `pool` from `peer` (grpc's peer string),
        or AuthError."""
        rule = self.policy.rule_for(pool)
        token = bearer_token(metadata)
        if token is not None:
            self._check_transport(auth_context, peer)
            if rule is not None and _any_equal(token, rule.tokens):
                return self._grant(f"pool-token:{rule.pattern}#{token_id(token)}", rule)
            if _any_equal(token, self.global_tokens):
                return self._grant(f"global-token#{token_id(token)}", rule)
            others = [t for r in self.policy.rules if r is not rule for t in r.tokens]
            if _any_equal(token, others):
                raise AuthError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"the registration token is not allowed for pool {pool!r}",
                    "token_not_for_pool",
                )
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED,
                "the registration token is not valid; check --registration-token on both sides",
                "bad_token",
            )
        names = peer_names(auth_context)
        if names or (auth_context or {}).get("x509_subject"):
            identity = admitted(rule.identities if rule else (), names)
            if identity is not None:
                return self._grant(f"mtls:{identity[:128]}", rule)
            if not self.insecure:
                shown = (
                    f"client certificate {names.shown()!r}"
                    if names
                    else "a client certificate without a DNS or URI SAN"
                )
                raise AuthError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{shown} is not allowed for pool {pool!r}; add its DNS or URI SAN to the "
                    "pool's identities in the registration policy",
                    "identity_not_for_pool",
                )
        if self.insecure:
            return self._grant("insecure", rule, create=True)
        raise AuthError(
            grpc.StatusCode.UNAUTHENTICATED,
            "registration needs a credential: send metadata 'authorization: Bearer <registration "
            "token>' or connect with an allowed client certificate",
            "no_credential",
        )

    def client_principal(
        self,
        pool: str,
        metadata: Iterable[tuple[str, str | bytes]] | None,
        auth_context: Mapping[str, Iterable[bytes]] | None = None,
        peer: str = "",
    ) -> str | None:
        """Who a BalanceLoad stream into `pool` is, for its reports'
        weight: "client-token:<pool rule>" or "mtls:<identity>" with a client
        credential of the pool, "anonymous" without one where the pool does
        not require it, None where it does (its reports are shown, never
        evidence). AuthError for a token that is not a client token of the
        pool (or a malformed authorization entry)."""
        rule = self.policy.rule_for(pool)
        if rule is None or not (rule.client_tokens or rule.client_identities):
            return "anonymous"
        token = bearer_token(metadata)
        if token is not None:
            self._check_transport(auth_context, peer, "client")
            if _any_equal(token, rule.client_tokens):
                return f"client-token:{rule.pattern}"
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED,
                f"the client token is not valid for pool {pool!r}; check the token the "
                "client sends to the balancer (BalanceLoad, or the xDS bootstrap's call_creds)",
                "bad_client_token",
            )
        identity = admitted(rule.client_identities, peer_names(auth_context))
        if identity is not None:
            return f"mtls:{identity[:128]}"
        return None if rule.require_client_credentials else "anonymous"


__all__ = [
    "AuthError",
    "Grant",
    "PolicyError",
    "PoolRule",
    "RegistrationAuth",
    "RegistrationPolicy",
    "bearer_token",
    "parse_networks",
    "read_secret",
    "token_id",
]
