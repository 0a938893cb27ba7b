"""Input checks shared by the registration API and the admin API.

Every check raises RegistryError with a message that says what was wrong
and what is allowed. Patterns are written with ^...$ so that JSON Schema
(the admin API's OpenAPI document) reads them as anchored, and are always
applied here with re.fullmatch: `$` alone also matches before a trailing
newline, which let "pool\n" through.
"""

from __future__ import annotations

import ipaddress
import re

from lookaside_registry.errors import InvalidInput, NotFound

POOL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DROP_TOKEN_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
ZONE_RE = re.compile(r"^[A-Za-z0-9._-]{0,63}$")
METADATA_KEY_RE = re.compile(r"^[A-Za-z0-9._/-]{1,63}$")

WEIGHT_MIN, WEIGHT_MAX = 1, 1000
METADATA_MAX_ENTRIES = 16
METADATA_MAX_VALUE = 256
# All keys and values of one registration together, in UTF-8 bytes.
METADATA_MAX_BYTES = 4096
LEASE_TTL_MIN_MS, LEASE_TTL_MAX_MS = 1_000, 3_600_000
REPORT_INTERVAL_MIN_MS, REPORT_INTERVAL_MAX_MS = 0, 3_600_000
# A pool's subset size: 0 is off; at most the longest list the balancer sends.
SUBSET_SIZE_MIN, SUBSET_SIZE_MAX = 0, 1000


# The registry's error hierarchy lives in lookaside_registry.errors; these
# are its names for refused input and missing things.
RegistryError = InvalidInput
NotFoundError = NotFound


def check_pool_name(name: str) -> str:
    if not name:
        raise RegistryError("pool name is empty")
    if not POOL_NAME_RE.fullmatch(name):
        raise RegistryError(
            f"pool name {name[:64]!r} is invalid: use 1..128 characters of "
            "[A-Za-z0-9._-], starting with a letter or digit"
        )
    return name


def check_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise RegistryError(f"port {port} is out of range 1..65535")
    return port


def check_weight(weight: int) -> int:
    if not WEIGHT_MIN <= weight <= WEIGHT_MAX:
        raise RegistryError(f"weight {weight} is out of range {WEIGHT_MIN}..{WEIGHT_MAX}")
    return weight


def check_zone(zone: str) -> str:
    if not ZONE_RE.fullmatch(zone):
        raise RegistryError(f"zone {zone[:64]!r} is invalid: up to 63 characters of [A-Za-z0-9._-]")
    return zone


def check_metadata(metadata: dict[str, str]) -> dict[str, str]:
    if len(metadata) > METADATA_MAX_ENTRIES:
        raise RegistryError(
            f"metadata has {len(metadata)} entries; at most {METADATA_MAX_ENTRIES} are allowed"
        )
    for key, value in metadata.items():
        if not METADATA_KEY_RE.fullmatch(key):
            raise RegistryError(
                f"metadata key {key[:64]!r} is invalid: 1..63 characters of [A-Za-z0-9._/-]"
            )
        if not isinstance(value, str) or any(c in value for c in "\r\n\x00"):
            raise RegistryError(
                f"metadata value for {key!r} holds a line break or NUL; use plain text"
            )
        if len(value) > METADATA_MAX_VALUE:
            raise RegistryError(
                f"metadata value for {key!r} is {len(value)} characters; "
                f"at most {METADATA_MAX_VALUE} are allowed"
            )
    size = sum(len(k.encode()) + len(val.encode()) for k, val in metadata.items())
    if size > METADATA_MAX_BYTES:
        raise RegistryError(
            f"metadata is {size} bytes in all; at most {METADATA_MAX_BYTES} are allowed"
        )
    return dict(metadata)


def check_lease_ttl_ms(ttl_ms: int) -> int:
    if not LEASE_TTL_MIN_MS <= ttl_ms <= LEASE_TTL_MAX_MS:
        raise RegistryError(
            f"lease TTL {ttl_ms} ms is out of range {LEASE_TTL_MIN_MS}..{LEASE_TTL_MAX_MS} ms"
        )
    return ttl_ms


def check_report_interval_ms(ms: int) -> int:
    if not REPORT_INTERVAL_MIN_MS <= ms <= REPORT_INTERVAL_MAX_MS:
        raise RegistryError(
            f"client stats report interval {ms} ms is out of range "
            f"{REPORT_INTERVAL_MIN_MS}..{REPORT_INTERVAL_MAX_MS} ms"
        )
    return ms


def check_subset_size(size: int) -> int:
    """A pool's subset size: 0 (every client gets every backend) or how many
    backends each client stream is given, at most a list's length."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise RegistryError(f"subset size must be a whole number, got {size!r}")
    if not SUBSET_SIZE_MIN <= size <= SUBSET_SIZE_MAX:
        raise RegistryError(
            f"subset size {size} is out of range {SUBSET_SIZE_MIN}..{SUBSET_SIZE_MAX} "
            "(0: every client gets every backend)"
        )
    return size


def check_drop_token(token: str) -> str:
    if not DROP_TOKEN_RE.fullmatch(token):
        raise RegistryError(
            f"drop token {token[:64]!r} is invalid: 1..32 characters of [a-z0-9_], "
            "starting with a letter"
        )
    return token


def parse_ip(value: str) -> str | None:
    """The canonical text of an IP address, or None when it is not one;
    an IPv4-mapped IPv6 address is its IPv4 address.
    An IPv6 scope id ("fe80::1%eth0") is refused: it names an interface of
    the sender's own host, and its free text ended up in logs and DNS."""
    text = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if "%" in text:
        raise RegistryError(
            f"host {value[:64]!r} carries an IPv6 scope id (%...); give a global address"
        )
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    # An IPv4-mapped IPv6 address is its IPv4 address (as a caller's is).
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def address_problem(ip: str) -> str | None:
    """Why an address is unfit to be listed to clients by default, or None.
    Loopback and private addresses are fine (labs, clusters); addresses that
    name no single reachable host, or that reach the metadata service of a
    cloud host (169.254.169.254), are not."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_unspecified:
        return "a wildcard address (unspecified)"
    if addr.is_multicast:
        return "a multicast address"
    if addr == ipaddress.IPv4Address("255.255.255.255"):
        return "the broadcast address"
    if addr.is_link_local:
        return "a link-local address"
    return None


def check_listable_ip(ip: str, *, allow_special: bool = False) -> str:
    """`ip` (canonical text) unless it is unspecified, multicast, broadcast
    or link-local and the pool does not allow such addresses."""
    problem = address_problem(ip)
    if problem and not allow_special:
        raise RegistryError(
            f"address {ip} is {problem}; give the backend's own unicast address "
            "(a pool's registration policy can allow special addresses explicitly)"
        )
    return ip


HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def check_hostname_syntax(host: str) -> str:
    if not HOSTNAME_RE.fullmatch(host):
        raise RegistryError(f"host {host[:64]!r} is neither an IP address nor a valid host name")
    return host


ADDRESS_POLICIES = ("peer", "certificate", "cidr", "any")
NETWORKS_MAX = 64


def check_network(text: str) -> str:
    """A network in CIDR notation (canonical text); host bits must be clear."""
    try:
        return str(ipaddress.ip_network(text, strict=True))
    except ValueError as exc:
        raise RegistryError(
            f"network {text[:64]!r} is not a network in CIDR notation ({exc}); "
            "write it as 10.0.0.0/8 or fd00::/8"
        ) from None


def check_registration_rules(
    address_policy: str, networks: tuple[str, ...] | list[str], lease_ttl_ms: int,
    max_lease_ttl_ms: int,
) -> None:  # fmt: skip
    """A pool's registration rules taken together: `cidr` needs networks,
    and the pool's default lease fits under its max_lease_ttl_ms."""
    if address_policy not in ADDRESS_POLICIES:
        raise RegistryError(
            f"address_policy {address_policy[:32]!r} is not one of: {', '.join(ADDRESS_POLICIES)}"
        )
    if address_policy == "cidr" and not networks:
        raise RegistryError(
            "address_policy cidr needs networks: give registration.networks, e.g. ['10.0.0.0/8']"
        )
    if lease_ttl_ms > max_lease_ttl_ms:
        raise RegistryError(
            f"lease_ttl_ms {lease_ttl_ms} is above registration.max_lease_ttl_ms "
            f"{max_lease_ttl_ms}; raise the maximum or shorten the default lease"
        )
