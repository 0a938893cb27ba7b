"""lookaside.registry.v1.Registry: backends register, heartbeat, leave."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from balancer_server import metrics
from lookaside.proto.registry.v1 import registry_pb2 as pb
from lookaside.proto.registry.v1 import registry_pb2_grpc as pb_grpc
from lookaside.registry import validation as v
from lookaside.registry.errors import Conflict, Unavailable
from lookaside.registry.hosts import resolve_host
from lookaside.registry.store import RegistryStore

log = logging.getLogger("lookaside.registry")

T = TypeVar("T")


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
        except Conflict as exc:
            await self._fail(
                context, method, grpc.StatusCode.FAILED_PRECONDITION, f"{verb} refused: {exc}"
            )
        except Unavailable as exc:
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
