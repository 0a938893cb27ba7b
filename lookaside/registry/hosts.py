"""Host resolution for registrations: the IP address a backend is listed at.

Used by the Registry API (the caller's address when the host is empty) and
by the admin API's static registrations.
"""

from __future__ import annotations

import asyncio
import socket

from lookaside.registry import validation as v

RESOLVE_TIMEOUT = 2.0


def _peer_ip(peer: str) -> str | None:
    # "ipv4:127.0.0.1:5555" or "ipv6:[::1]:5555"
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return None


async def resolve_host(host: str, peer: str, *, allow_special: bool = False) -> str:
    """The IP address to list for a registration's host, or RegistryError.
    Unspecified, multicast, broadcast and link-local addresses are refused
    unless `allow_special` (a pool's policy) allows them."""
    if not host:
        ip = _peer_ip(peer)
        if ip is None:
            raise v.RegistryError(
                f"host is empty and the caller's address ({peer[:64]}) is not an IP address; "
                "give the host explicitly"
            )
        ip = v.parse_ip(ip) or ip
        return v.check_listable_ip(ip, allow_special=allow_special)
    ip = v.parse_ip(host)
    if ip is not None:
        return v.check_listable_ip(ip, allow_special=allow_special)
    v.check_hostname_syntax(host)
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), timeout=RESOLVE_TIMEOUT
        )
    except (OSError, TimeoutError) as exc:
        raise v.RegistryError(f"host {host!r} does not resolve: {exc}") from None
    addrs = [str(info[4][0]) for info in infos]
    v4 = [a for a in addrs if ":" not in a]
    if not addrs:
        raise v.RegistryError(f"host {host!r} does not resolve to any address")
    ip = v.parse_ip((v4 or addrs)[0]) or (v4 or addrs)[0]
    return v.check_listable_ip(ip, allow_special=allow_special)
