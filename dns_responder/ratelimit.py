"""Response-rate limiting for UDP: the responder is no amplifier.

A UDP query's source address can be forged, so answers to one network are
limited: a token bucket per source network (an IPv4 /24, an IPv6 /56)
refills `rate` answers a second and holds at most `burst`. A query over
the limit is dropped, except every `slip`-th one, which gets a truncated
reply (the question alone, TC set, no larger than the query): a real
client behind a busy network retries over TCP, which cannot be forged and
is not limited; a forged victim receives little.

The table of buckets is bounded (MAX_NETWORKS, least recently seen first
out), so a flood from many networks costs bounded memory.
"""

from __future__ import annotations

import enum
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable

IPV4_PREFIX = 24
IPV6_PREFIX = 56
MAX_NETWORKS = 65536


class Verdict(enum.Enum):
    ANSWER = "answer"
    SLIP = "slip"  # answer truncated: the asker should retry over TCP
    DROP = "drop"


def source_network(host: str) -> str:
    """The network a source address is limited as (IPv4-mapped as IPv4)."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = IPV4_PREFIX if ip.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network((ip, prefix), strict=False))


class ResponseRateLimit:
    def __init__(
        self,
        rate: float,
        burst: float,
        slip: int = 2,
        clock: Callable[[], float] = time.monotonic,
        max_networks: int = MAX_NETWORKS,
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.slip = slip
        self.clock = clock
        self.max_networks = max_networks
        # network -> (tokens, when refilled, queries refused since the last slip)
        self._buckets: OrderedDict[str, tuple[float, float, int]] = OrderedDict()

    def admit(self, host: str) -> Verdict:
        if self.rate <= 0:
            return Verdict.ANSWER
        network = source_network(host)
        now = self.clock()
        tokens, then, refused = self._buckets.pop(network, (self.burst, now, 0))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            verdict, tokens, refused = Verdict.ANSWER, tokens - 1.0, 0
        else:
            refused += 1
            verdict = Verdict.DROP
            if self.slip and refused >= self.slip:
                verdict, refused = Verdict.SLIP, 0
        self._buckets[network] = (tokens, now, refused)
        if len(self._buckets) > self.max_networks:
            self._buckets.popitem(last=False)
        return verdict
