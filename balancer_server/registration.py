"""lookaside.registry.v1.Registry: backends register, heartbeat, leave."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import redis.exceptions

from balancer_server import metrics
from lookaside.proto.registry.v1 import registry_pb2 as pb
from lookaside.proto.registry.v1 import registry_pb2_grpc as pb_grpc
from lookaside.registry import validation as v
from lookaside.registry.store import RegistryStore

log = logging.getLogger("lookaside.registry")

RESOLVE_TIMEOUT = 2.0
T = TypeVar("T")


def _peer_ip(peer: str) -> str | None:
    # "ipv4:127.0.0.1:5555" or "ipv6:[::1]:5555"
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return None


async def resolve_host(host: str, peer: str) -> str:
    """The IP address to list for a registration's host, or RegistryError."""
    if not host:
        ip = _peer_ip(peer)
        if ip is None:
            raise v.RegistryError(
                f"host is empty and the caller's address ({peer}) is not an IP address; "
                "give the host explicitly"
            )
        return v.parse_ip(ip) or ip
    ip = v.parse_ip(host)
    if ip is not None:
        if ip in ("0.0.0.0", "::"):
            raise v.RegistryError(f"host {host!r} is a wildcard address; give a reachable address")
        return ip
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
    return (v4 or addrs)[0]


def _duration_ms(d: Any) -> int:
    return d.seconds * 1000 + d.nanos // 1_000_000


class RegistryService(pb_grpc.RegistryServicer):
    def __init__(self, store: RegistryStore) -> None:
        self.store = store

    async def _fail(self, context: Any, method: str, code: grpc.StatusCode, details: str) -> None:
        metrics.REGISTRATIONS.labels(method, code.name).inc()
        await context.abort(code, details)

    async def _run(
        self,
        context: Any,
        method: str,
        verb: str,
        work: Callable[[], Awaitable[T]],
        not_found_hint: str = "",
    ) -> T:
        """Runs one registry operation and turns its failures into statuses:
        bad input INVALID_ARGUMENT, a missing backend or lease NOT_FOUND,
        Redis away UNAVAILABLE."""
        try:
            result = await work()
        except v.RegistryError as exc:
            await self._fail(
                context, method, grpc.StatusCode.INVALID_ARGUMENT, f"{verb} refused: {exc}"
            )
        except v.NotFoundError as exc:
            await self._fail(context, method, grpc.StatusCode.NOT_FOUND, f"{exc}{not_found_hint}")
        except (redis.exceptions.RedisError, OSError) as exc:
            await self._fail(
                context, method, grpc.StatusCode.UNAVAILABLE, f"registry unavailable: {exc}"
            )
        else:
            metrics.REGISTRATIONS.labels(method, "OK").inc()
            return result
        raise AssertionError("unreachable: abort raises")

    async def Register(self, request: pb.RegisterRequest, context: Any) -> pb.RegisterResponse:  # noqa: N802
        async def validate() -> tuple[str, int, int, str, dict[str, str], int, str]:
            pool = v.check_pool_name(request.pool)
            port = v.check_port(request.port)
            weight = v.check_weight(request.weight or 1)
            zone = v.check_zone(request.zone)
            metadata = v.check_metadata(dict(request.metadata))
            ttl_ms = 0
            if request.HasField("lease_ttl"):
                ttl_ms = v.check_lease_ttl_ms(_duration_ms(request.lease_ttl))
            ip = await resolve_host(request.host, context.peer())
            return pool, port, weight, zone, metadata, ttl_ms, ip

        try:
            pool, port, weight, zone, metadata, ttl_ms, ip = await validate()
        except v.RegistryError as exc:
            await self._fail(
                context,
                "Register",
                grpc.StatusCode.INVALID_ARGUMENT,
                f"registration refused: {exc}",
            )
            raise AssertionError("unreachable: abort raises") from None
        lease = await self._run(
            context,
            "Register",
            "registration",
            lambda: self.store.register(
                pool=pool, host=request.host or ip, ip=ip, port=port, weight=weight,
                zone=zone, metadata=metadata, lease_ttl_ms=ttl_ms,
            ),
        )  # fmt: skip
        log.info(
            "registered pool=%s backend=%s addr=%s:%d weight=%d ttl_ms=%d",
            pool, lease.backend_id, ip, port, weight, lease.ttl_ms,
        )  # fmt: skip
        response = pb.RegisterResponse(
            backend_id=lease.backend_id, lease_id=lease.lease_id, address=f"{ip}:{port}"
        )
        response.lease_ttl.FromMilliseconds(lease.ttl_ms)
        response.heartbeat_interval.FromMilliseconds(max(lease.ttl_ms // 3, 100))
        return response

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:  # noqa: N802
        load = None
        if request.HasField("load"):
            load = {
                "utilization": request.load.utilization,
                "in_flight": request.load.in_flight,
                "qps": request.load.qps,
                "latency_ms": request.load.latency_ms,
            }

        async def beat() -> int:
            v.check_pool_name(request.pool)
            return await self.store.heartbeat(
                request.pool, request.backend_id, request.lease_id, load
            )

        ttl = await self._run(context, "Heartbeat", "heartbeat", beat, "; register again")
        response = pb.HeartbeatResponse()
        response.lease_ttl.FromMilliseconds(ttl)
        return response

    async def Deregister(
        self, request: pb.DeregisterRequest, context: Any
    ) -> pb.DeregisterResponse:  # noqa: N802
        async def leave() -> None:
            v.check_pool_name(request.pool)
            await self.store.deregister(request.pool, request.backend_id, request.lease_id)

        await self._run(context, "Deregister", "deregistration", leave)
        log.info("deregistered pool=%s backend=%s", request.pool, request.backend_id)
        return pb.DeregisterResponse()

    async def Drain(self, request: pb.DrainRequest, context: Any) -> pb.DrainResponse:  # noqa: N802
        async def drain() -> bool:
            v.check_pool_name(request.pool)
            return await self.store.drain(request.pool, request.backend_id, request.lease_id)

        if await self._run(context, "Drain", "drain", drain):
            log.info("draining pool=%s backend=%s", request.pool, request.backend_id)
        return pb.DrainResponse()


__all__ = ["RegistryService", "resolve_host"]
