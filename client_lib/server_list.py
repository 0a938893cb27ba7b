"""Reading grpclb responses into what a channel needs: the addresses of a
server list and the picks that go with them."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from client_lib._lb_proto import lb
from client_lib.picker import Pick

INITIAL_REQUEST_NAME_MAX = 255


@dataclass(frozen=True, slots=True)
class ListEntry:
    address: str  # "ip:port" or "[ipv6]:port"; empty for a drop
    token: str
    drop: bool


def parse_server_list(server_list: lb.ServerList) -> list[ListEntry]:
    """The list's entries; malformed ones (an address of neither 4 nor 16
    bytes, a port outside 1..65535) are skipped, and a token of 50 bytes or
    more is ignored (the entry is kept, without a token), as C-core does."""
    out = []
    for s in server_list.servers:
        if s.drop:
            out.append(ListEntry("", s.load_balance_token, True))
            continue
        if len(s.ip_address) not in (4, 16) or not 0 < s.port < 65536:
            continue
        ip = ipaddress.ip_address(s.ip_address)
        host = str(ip) if ip.version == 4 else f"[{ip}]"
        token = s.load_balance_token if len(s.load_balance_token.encode()) < 50 else ""
        out.append(ListEntry(f"{host}:{s.port}", token, False))
    return out


def build_picks(entries: list[ListEntry], subchannel: Callable[[str], Any]) -> list[Pick]:
    """Picks for a list: one per entry, with the entry's lb-token metadata
    (no header for an empty token)."""
    picks = []
    for e in entries:
        if e.drop:
            picks.append(Pick(None, (), e.token))
        else:
            md = (("lb-token", e.token),) if e.token else ()
            picks.append(Pick(subchannel(e.address), md, e.token))
    return picks


class SubChannel:
    """One backend's channel (sync or grpc.aio), its last seen connectivity
    state, and the multi-callables made on it, one per method signature,
    made on first use."""

    __slots__ = ("address", "channel", "methods", "state", "watcher", "parked")

    def __init__(self, address: str, channel: Any) -> None:
        self.address = address
        self.channel = channel
        self.methods: dict[tuple[Any, ...], Any] = {}
        self.state = grpc.ChannelConnectivity.IDLE
        self.watcher: Any = None  # what the driver uses to watch the state
        # sync only: the call parked by client_lib._spin.pin (False: none
        # parked; None: not tried yet)
        self.parked: Any = None

    def multicallable(self, key: tuple[str, str, Any, Any], registered: bool) -> Any:
        """key: (kind, method, request serializer, response deserializer)."""
        mc = self.methods.get(key)
        if mc is None:
            kind, method, ser, deser = key
            mc = getattr(self.channel, kind)(method, ser, deser, _registered_method=registered)
            self.methods[key] = mc
        return mc


S = TypeVar("S")


def rebuild(
    entries: list[ListEntry], old: dict[str, S], make: Callable[[str], S]
) -> tuple[dict[str, S], list[Pick], list[S]]:
    """Sub-channels and picks for a new list: sub-channels of addresses still
    listed are kept, new ones made, and the ones no longer listed returned
    for the caller to close (after a grace, so in-flight calls finish)."""
    new: dict[str, S] = {}

    def sub(address: str) -> S:
        s = new.get(address) or old.get(address)
        if s is None:
            s = make(address)
        new[address] = s
        return s

    picks = build_picks(entries, sub)
    retired = [s for a, s in old.items() if a not in new]
    return new, picks, retired


def report_interval_seconds(initial: lb.InitialLoadBalanceResponse) -> float:
    """The client stats interval the balancer asked for: 0 disables reports;
    anything else is clamped to at least 1 s, as C-core does."""
    d = initial.client_stats_report_interval
    seconds = d.seconds + d.nanos / 1e9
    if seconds <= 0:
        return 0.0
    return max(seconds, 1.0)
