"""The DNS responder: UDP and TCP on one port, answers from the registry.

A RegistryWatcher keeps a snapshot of every pool (pub/sub nudges plus
version polling), and every query is answered from those snapshots by
records.answer; nothing on the query path touches Redis. While Redis is
down the last snapshots are served.

Nothing here amplifies a forged query much: UDP answers are at most 1,232
bytes (larger ones go out truncated and are served whole over TCP), ANY is
answered with one HINFO record (RFC 8482), and UDP answers to one source
network are rate-limited (dns_responder.ratelimit).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import struct
import time
from typing import Any

from dnslib import QTYPE, RCODE, DNSRecord

from dns_responder import metrics
from dns_responder.ratelimit import ResponseRateLimit, Verdict
from dns_responder.records import (
    TCP_MAX,
    Target,
    ZoneView,
    advertise,
    answer,
    encode,
    error_reply,
    udp_limit,
)
from dns_responder.settings import DnsSettings
from lookaside_registry.asyncutil import cancel_and_wait, until_signalled
from lookaside_registry.model import PoolSnapshot
from lookaside_registry.port import DnsPort
from lookaside_registry.store import RegistryStore
from lookaside_registry.watcher import RegistryWatcher
from server_common.settings import split_host_port

log = logging.getLogger("lookaside.dns")

TCP_IDLE_TIMEOUT = 10.0
NAME_REFRESH_INTERVAL = 30.0
NAME_RESOLVE_TIMEOUT = 2.0
BIND_ATTEMPTS = 20
MAX_NAME_BYTES = 255  # a name's wire length (RFC 1035 3.1)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, responder: DnsResponder) -> None:
        self.responder = responder
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        verdict = self.responder.rate_limit.admit(str(addr[0]))
        if verdict is Verdict.DROP:
            metrics.RATE_LIMITED.labels("dropped").inc()
            return
        if verdict is Verdict.SLIP:
            metrics.RATE_LIMITED.labels("slipped").inc()
        out = self.responder.handle(data, "udp", addr, truncate=verdict is Verdict.SLIP)
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("dns udp: socket error %s", exc)


class DnsResponder:
    """Serves the zone on settings.listen (port 0 picks a free port that is
    free for both UDP and TCP). start() returns the bound port. The pools
    come from `store` (either adapter of the registry port), or without
    one from a RegistryStore on settings.redis_url, closed at stop()."""

    def __init__(self, settings: DnsSettings, store: DnsPort | None = None) -> None:
        self.settings = settings
        self.zone = settings.zone
        self._own_store = store is None
        self.store: DnsPort = store or RegistryStore.from_url(
            settings.redis_url, cluster=settings.redis_cluster
        )
        self.watcher = RegistryWatcher(
            self.store, resync_interval=settings.resync_interval, hooks=[self._on_change]
        )
        self.balancers = settings.balancer_addresses()
        self._resolved: dict[str, list[str]] = {}
        self.targets: tuple[Target, ...] = advertise(self.balancers, self.zone)
        self.serial = int(time.time())
        self.port = 0
        self._ever_synced = False
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_writers: set[asyncio.StreamWriter] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.rate_limit = ResponseRateLimit(
            settings.rate_limit, settings.rate_limit_burst, settings.rate_limit_slip
        )

    # -- answering -----------------------------------------------------------

    def view(self) -> ZoneView:
        if self.watcher.redis_ok:
            self._ever_synced = True
        return ZoneView(
            zone=self.zone,
            ttl=self.settings.ttl,
            targets=self.targets,
            pools=self.watcher.snapshots,
            serial=self.serial,
            service_config=self.settings.service_config,
            ready=self._ever_synced,
        )

    def handle(
        self, data: bytes, transport: str, peer: Any, *, truncate: bool = False
    ) -> bytes | None:
        """The reply bytes for one message, or None to stay silent; with
        `truncate`, the question alone with TC set. Never raises."""
        try:
            request = DNSRecord.parse(data)
            for q in request.questions:  # dnslib parses names it cannot write back
                if sum(len(label) + 1 for label in q.qname.label) + 1 > MAX_NAME_BYTES:
                    raise ValueError(f"question name over {MAX_NAME_BYTES} bytes")
        except Exception as exc:  # noqa: BLE001 - dnslib raises several types on garbage
            metrics.MALFORMED.labels(transport).inc()
            log.debug(
                "dns %s: malformed packet from %s (%d bytes): %s", transport, peer, len(data), exc
            )
            return error_reply(data, RCODE.FORMERR)
        if request.header.qr:
            return None  # a response, not a query
        try:
            reply = answer(request, self.view())
            limit = 0 if truncate else udp_limit(request) if transport == "udp" else TCP_MAX
            out = encode(reply, limit)
        except Exception:
            log.exception("dns %s: failed to answer %s from %s", transport, request.q, peer)
            return error_reply(data, RCODE.SERVFAIL)
        if out[2] & 0x02:  # TC
            metrics.TRUNCATED.inc()
        qtype = QTYPE.get(request.q.qtype, str(request.q.qtype)) if request.questions else "-"
        rcode = RCODE.get(reply.header.rcode, str(reply.header.rcode))
        metrics.QUERIES.labels(transport, qtype, rcode).inc()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "dns query transport=%s peer=%s name=%s type=%s rcode=%s answers=%d bytes=%d",
                transport,
                peer,
                request.q.qname if request.questions else "-",
                qtype,
                rcode,
                len(reply.rr),
                len(out),
            )
        return out

    def _on_change(self, pool: str, snapshot: PoolSnapshot | None) -> None:
        self.serial += 1
        metrics.POOLS.set(len(self.watcher.snapshots))
        if snapshot is None:
            log.info("dns: pool=%s removed; its names now answer NXDOMAIN", pool)
        else:
            log.debug(
                "dns: pool=%s version=%d serving=%d", pool, snapshot.version, len(snapshot.serving)
            )

    # -- balancer names ------------------------------------------------------

    async def _resolve_names(self) -> None:
        """Looks up the addresses of balancers given by name, for the
        ADDITIONAL section and for names inside the zone."""
        loop = asyncio.get_running_loop()
        changed = False
        for host, _port in self.balancers:
            if not _is_ip(host):
                try:
                    infos = await asyncio.wait_for(
                        loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), NAME_RESOLVE_TIMEOUT
                    )
                except (OSError, TimeoutError) as exc:
                    log.warning(
                        "dns: balancer host %s does not resolve (%s); keeping %s",
                        host,
                        exc,
                        self._resolved.get(host, []),
                    )
                    continue
                addrs = sorted({str(info[4][0]) for info in infos})
                if addrs != self._resolved.get(host):
                    self._resolved[host] = addrs
                    changed = True
        if changed:
            self.targets = advertise(self.balancers, self.zone, self._resolved)
            self.serial += 1

    async def _refresh_names(self) -> None:
        while True:
            await asyncio.sleep(NAME_REFRESH_INTERVAL)
            await self._resolve_names()

    async def _redis_gauge(self) -> None:
        while True:
            metrics.REDIS_UP.set(1 if self.watcher.redis_ok else 0)
            await asyncio.sleep(1.0)

    # -- sockets -------------------------------------------------------------

    async def _bind(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        for _attempt in range(BIND_ATTEMPTS if port == 0 else 1):
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(host, port)
            )
            bound = udp.get_extra_info("sockname")[1]
            try:
                tcp = await asyncio.start_server(self._serve_tcp, host, bound, reuse_address=True)
            except OSError as exc:
                udp.close()
                if port == 0 and exc.errno == errno.EADDRINUSE:
                    continue  # the free UDP port is taken for TCP: try another
                raise OSError(
                    exc.errno, f"cannot listen on TCP {host}:{bound}: {exc.strerror}"
                ) from exc
            self._udp, self._tcp = udp, tcp
            return bound
        raise OSError(errno.EADDRINUSE, f"no port on {host} is free for both UDP and TCP")

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        self._tcp_writers.add(writer)
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
                (length,) = struct.unpack("!H", head)
                data = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE_TIMEOUT)
                out = self.handle(data, "tcp", peer)
                if out is None:
                    return
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            return  # the asker closed or went idle
        finally:
            self._tcp_writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def start(self) -> int:
        host, port = split_host_port(self.settings.listen, "listen")
        await self._resolve_names()
        await self.watcher.start()
        if self.watcher.redis_ok:
            self._ever_synced = True
        metrics.POOLS.set(len(self.watcher.snapshots))
        self.port = await self._bind(host, port)
        self._tasks = [
            asyncio.create_task(self._refresh_names(), name="dns-names"),
            asyncio.create_task(self._redis_gauge(), name="dns-redis-gauge"),
        ]
        log.info(
            "dns responder listening on %s port %d (udp+tcp) zone=%s balancers=%s pools=%d",
            host,
            self.port,
            self.zone,
            ",".join(f"{t.name}:{t.port}" for t in self.targets),
            len(self.watcher.snapshots),
        )
        return self.port

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for writer in list(self._tcp_writers):
                writer.close()
            await self._tcp.wait_closed()
            self._tcp = None
        await self.watcher.stop()
        if self._own_store:
            await self.store.close()
        log.info("dns responder stopped")


async def serve(settings: DnsSettings) -> None:
    """Runs the responder until SIGINT or SIGTERM."""
    metrics.start_metrics(
        settings.metrics_listen, settings.metrics_tls_cert, settings.metrics_tls_key
    )
    responder = DnsResponder(settings)
    await responder.start()
    await until_signalled()
    log.info("shutting down")
    await responder.stop()
