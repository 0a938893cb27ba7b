"""Which addresses a registration may claim, and what it may ask for: a
pool's registration rules (lookaside_registry.model.RegistrationRules).

A credential admits a caller into a pool; these rules bind what it
registers to who it is:

- `peer` (the default): the host is the caller's own address (or empty),
  or a name that resolves to it; the caller's address is listed.
- `certificate`: the host is an IP address or DNS name of the caller's
  client certificate (IP and DNS SANs only; never the CN).
- `cidr`: the address is in one of the pool's `networks`.
- `any`: whatever the host resolves to (registrars that register others).

A refusal names the rule: `registration refused: 127.0.0.2:8081 is not the
caller's address 127.0.0.1 (pool routeguide has address_policy peer)`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from lookaside_registry import validation as v
from lookaside_registry.hosts import candidates, peer_ip
from lookaside_registry.model import RegistrationRules


class AddressRefused(Exception):
    """The address is valid but the pool's address policy does not let this
    caller claim it (PERMISSION_DENIED); the message names the rule."""


def _sans(auth_context: Mapping[str, Iterable[bytes]] | None, key: str) -> list[str]:
    return [x.decode("utf-8", "replace") for x in (auth_context or {}).get(key, ())]


def certificate_addresses(
    auth_context: Mapping[str, Iterable[bytes]] | None,
) -> tuple[list[str], list[str]]:
    """The verified client certificate's IP SANs (canonical text) and DNS
    SANs (lower case); both empty without mTLS."""
    ips = [v.parse_ip(x) or x for x in _sans(auth_context, "peer_ip")]
    dns = [x.lower().rstrip(".") for x in _sans(auth_context, "peer_dns")]
    return ips, dns


def dns_san_matches(name: str, pattern: str) -> bool:
    """A DNS SAN match: exact, or `*.` standing for one leftmost label."""
    if not pattern.startswith("*."):
        return name == pattern
    head, _, rest = name.partition(".")
    return bool(head) and rest == pattern[2:]


def in_networks(ip: str, networks: Iterable[str]) -> bool:
    addr = ipaddress.ip_address(ip)
    return any(addr in ipaddress.ip_network(n, strict=False) for n in networks)


async def bind_address(
    rules: RegistrationRules,
    pool: str,
    host: str,
    port: int,
    peer: str,
    auth_context: Mapping[str, Iterable[bytes]] | None,
    *,
    allow_special: bool = False,
    bound: str = "",
) -> str:
    """The IP address to list for a registration of `host:port` by the
    caller `peer`, or AddressRefused (the pool's rule forbids it) or
    RegistryError (the host is no address). A credential `bound` to one
    "ip:port" (a per-backend token) may register that address only, in
    place of the pool's rule."""
    found = await candidates(host, peer)
    if not host or v.parse_ip(host) is not None:
        # An address no one may list is bad input, whoever asks.
        v.check_listable_ip(found[0], allow_special=allow_special)
    policy = rules.address_policy
    rule = f"(pool {pool} has address_policy {policy})"
    shown = f"{host or found[0]}:{port}"
    if host and host != found[0]:
        shown += f" ({', '.join(found[:4])})"
    if bound:
        # Canonical, as the admin API stored it: "ip:port" or "[v6]:port".
        text, _, bound_port = bound.rpartition(":")
        bound_ip = text.strip("[]")
        if bound_ip not in found or bound_port != str(port):
            raise AddressRefused(
                f"registration refused: {shown} is not {bound}, the address this backend "
                f"token of pool {pool} is bound to"
            )
        ip = bound_ip
    elif policy == "peer":
        caller = peer_ip(peer)
        if caller not in found:
            raise AddressRefused(
                f"registration refused: {shown} is not the caller's address {caller or peer[:64]} "
                f"{rule}; register the host this process connects from, or leave it empty"
            )
        ip = caller
    elif policy == "certificate":
        ips, dns = certificate_addresses(auth_context)
        if not ips and not dns:
            raise AddressRefused(
                f"registration refused: the caller has no client certificate {rule}; "
                "connect with mTLS"
            )
        name = host.lower().rstrip(".")
        if host and v.parse_ip(host) is None and any(dns_san_matches(name, p) for p in dns):
            ip = found[0]
        else:
            allowed = [a for a in found if a in ips]
            if not allowed:
                raise AddressRefused(
                    f"registration refused: {shown} is not an IP address or DNS name of the "
                    f"caller's client certificate {rule}"
                )
            ip = allowed[0]
    elif policy == "cidr":
        allowed = [a for a in found if in_networks(a, rules.networks)]
        if not allowed:
            nets = ", ".join(rules.networks) or "none"
            raise AddressRefused(
                f"registration refused: {shown} is not in the pool's networks ({nets}) {rule}"
            )
        ip = allowed[0]
    elif policy == "any":
        ip = found[0]
    else:  # a stored setting no API lets through: refuse rather than admit
        raise AddressRefused(
            f"registration refused: pool {pool} has an unknown address_policy {policy[:32]!r}; "
            "an operator must set one of peer, certificate, cidr, any"
        )
    return v.check_listable_ip(ip, allow_special=allow_special)


def check_asks(rules: RegistrationRules, pool: str, weight: int, ttl_ms: int) -> None:
    """RegistryError (INVALID_ARGUMENT) when a registration asks for more
    weight or a longer lease than the pool allows."""
    if weight > rules.max_weight:
        raise v.RegistryError(
            f"weight {weight} is above max_weight {rules.max_weight} of pool {pool}; ask for "
            "less, or have an operator raise the pool's registration.max_weight"
        )
    if ttl_ms > rules.max_lease_ttl_ms:
        raise v.RegistryError(
            f"lease TTL {ttl_ms} ms is above max_lease_ttl_ms {rules.max_lease_ttl_ms} of pool "
            f"{pool}; ask for less, or have an operator raise the pool's "
            "registration.max_lease_ttl_ms"
        )
