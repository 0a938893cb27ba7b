"""Host resolution for registrations: the IP address a backend is listed at.

Used by the Registry API (the caller's address when the host is empty) and
by the admin API's static registrations.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from lookaside_registry import validation as v

RESOLVE_TIMEOUT = 2.0


def peer_ip(peer: str) -> str | None:
    """The caller's IP address (canonical text; an IPv4-mapped IPv6 address
    as IPv4) from a gRPC peer string, or None when it is not an IP peer."""
    # "ipv4:127.0.0.1:5555" or "ipv6:[::1]:5555"
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        text = rest.rsplit(":", 1)[0]
    elif kind == "ipv6":
        text = rest.rsplit(":", 1)[0].strip("[]")
    else:
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


async def candidates(host: str, peer: str) -> list[str]:
    """The IP addresses a registration's host names, IPv4 first: the
    caller's address when the host is empty, the host when it is an IP
    address, else what the name resolves to. RegistryError when there is
    none."""
    if not host:
        ip = peer_ip(peer)
        if ip is None:
            raise v.RegistryError(
                f"host is empty and the caller's address ({peer[:64]}) is not an IP address; "
                "give the host explicitly"
            )
        return [ip]
    ip = v.parse_ip(host)
    if ip is not None:
        return [ip]
    v.check_hostname_syntax(host)
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), timeout=RESOLVE_TIMEOUT
        )
    except (OSError, TimeoutError) as exc:
        raise v.RegistryError(f"host {host!r} does not resolve: {exc}") from None
    addrs = [v.parse_ip(str(info[4][0])) or str(info[4][0]) for info in infos]
    if not addrs:
        raise v.RegistryError(f"host {host!r} does not resolve to any address")
    addrs = list(dict.fromkeys(addrs))
    return [a for a in addrs if ":" not in a] + [a for a in addrs if ":" in a]


async def resolve_host(host: str, peer: str, *, allow_special: bool = False) -> str:
    """The IP address to list for a registration's host, or RegistryError.
    Unspecified, multicast, broadcast and link-local addresses are refused
    unless `allow_special` (a pool's policy) allows them."""
    ip = (await candidates(host, peer))[0]
    return v.check_listable_ip(ip, allow_special=allow_special)
