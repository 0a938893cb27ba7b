"""A real DnsResponder on its own event loop thread, and a small client."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from dnslib import QTYPE, RCODE, DNSRecord

from dns_responder.server import DnsResponder
from dns_responder.settings import DnsSettings
from lookaside_registry.store import RegistryStore
from tests.support import LoopThread

T = TypeVar("T")

ZONE = "lookaside.test"


class DnsHandle:
    """A DnsResponder on 127.0.0.1:<free port> (UDP and TCP)."""

    def __init__(self, redis_url: str, **overrides: Any) -> None:
        settings: dict[str, Any] = dict(
            listen="127.0.0.1:0",
            redis_url=redis_url,
            zone=ZONE,
            ttl=1,
            resync_interval=0.2,
            metrics_listen="",
        )
        settings.update(overrides)
        self.settings = DnsSettings(**settings)
        self.loop = LoopThread("dns")
        self.responder = DnsResponder(self.settings)
        self.port = self.loop.run(self.responder.start())
        self.stopped = False

    @property
    def store(self) -> RegistryStore:
        return self.responder.store

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Runs a coroutine (for example a RegistryStore call) on the responder's loop."""
        return self.loop.run(coro, timeout)

    def query(self, name: str, qtype: str = "A", *, tcp: bool = False) -> DNSRecord:
        raw = DNSRecord.question(name, qtype).send("127.0.0.1", self.port, tcp=tcp, timeout=5.0)
        return DNSRecord.parse(raw)

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.loop.run(self.responder.stop())
        self.loop.close()


def rcode(reply: DNSRecord) -> str:
    return RCODE.get(reply.header.rcode)


def answers(reply: DNSRecord, qtype: str) -> list[str]:
    """The rdata of the answer records of one type, as text, sorted."""
    return sorted(str(r.rdata) for r in reply.rr if QTYPE.get(r.rtype) == qtype)
