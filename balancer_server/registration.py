"""lookaside.registry.v1.Registry: backends register, heartbeat, leave.

Every call is authorized first (balancer_server.auth): no credential is
UNAUTHENTICATED, a credential for another pool PERMISSION_DENIED, and each
refusal is counted and logged with the caller's address (never a secret).
Heartbeat, Drain and Deregister need the lease id Register returned.

What a registration may claim is the pool's (balancer_server.address_policy):
an address outside its address_policy is PERMISSION_DENIED, a weight or a
lease above its caps INVALID_ARGUMENT. A live lease is its registrant's:
another principal's Register of the address, Heartbeat, Drain or Deregister
is PERMISSION_DENIED (the registry decides it in the write itself).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from balancer_server import metrics
from balancer_server.address_policy import AddressRefused, bind_address, check_asks
from balancer_server.auth import AuthError, Grant, RegistrationAuth, bearer_token
from balancer_server.limits import RateLimitedLog
from lookaside_proto.registry.v1 import registry_pb2 as pb
from lookaside_proto.registry.v1 import registry_pb2_grpc as pb_grpc
from lookaside_registry import validation as v
from lookaside_registry.errors import Conflict, NotOwner, PoolFull, TooManyPools, Unavailable
from lookaside_registry.hosts import resolve_host
from lookaside_registry.model import PoolConfig
from lookaside_registry.port import RegistrationPort

log = logging.getLogger("lookaside_registry")

T = TypeVar("T")


def _duration_ms(d: Any) -> int:
    return d.seconds * 1000 + d.nanos // 1_000_000


class RegistryService(pb_grpc.RegistryServicer):
    def __init__(self, store: RegistrationPort, auth: RegistrationAuth | None = None) -> None:
        self.store = store
        self.auth = auth or RegistrationAuth()
        self._refusal_log = RateLimitedLog(log)

    async def _fail(self, context: Any, method: str, code: grpc.StatusCode, details: str) -> None:
        metrics.REGISTRATIONS.labels(method, code.name).inc()
        await context.abort(code, details)

    async def _authorize(self, context: Any, method: str, pool: str) -> Grant:
        """The caller's grant for `pool`, or the call ends UNAUTHENTICATED or
        PERMISSION_DENIED (counted, and logged without the credential)."""
        metadata = context.invocation_metadata()
        try:
            return self.auth.authorize(pool, metadata, context.auth_context(), context.peer())
        except AuthError as exc:
            grant = await self._backend_token(context, method, exc, pool, metadata)
            if grant is not None:
                return grant
            metrics.AUTH_REFUSALS.labels(method, exc.code.name, exc.reason).inc()
            self._refusal_log.warning(
                f"auth:{exc.reason}",
                "registration refused method=%s code=%s reason=%s peer=%s pool=%r",
                method, exc.code.name, exc.reason, context.peer(), pool[:128],
            )  # fmt: skip
            await self._fail(context, method, exc.code, exc.details)
        raise AssertionError("unreachable: abort raises")

    async def _backend_token(
        self, context: Any, method: str, exc: AuthError, pool: str, metadata: Any
    ) -> Grant | None:
        """The grant of a per-backend token of `pool` that the policy does
        not know (lookaside_registry.tokens), or None."""
        if exc.reason != "bad_token" or not v.POOL_NAME_RE.fullmatch(pool):
            return None
        token = bearer_token(metadata)
        try:
            record = await self.store.backend_token(pool, token) if token else None
        except Unavailable as err:
            await self._fail(
                context, method, grpc.StatusCode.UNAVAILABLE, f"registry unavailable: {err}"
            )
        if record is None:
            return None
        return self.auth.backend_token_grant(pool, record.id, record.address)

    async def _refuse_limit(self, context: Any, limit: str, details: str) -> None:
        metrics.LIMIT_REFUSALS.labels(limit).inc()
        self._refusal_log.warning(
            f"limit:{limit}", "registration refused limit=%s peer=%s: %s",
            limit, context.peer(), details,
        )  # fmt: skip
        await self._fail(context, "Register", grpc.StatusCode.RESOURCE_EXHAUSTED, details)

    async def _check_room(self, context: Any, grant: Grant, pool: str, exists: bool) -> bool:
        """Whether the pool exists; a registration that may create it first
        reserves its name in the pools index, which counts the pools and adds
        the name in one atomic step (the limit on a pool's backends is
        checked in the registration's own script)."""
        if exists or not grant.create:
            return exists
        try:
            await self.store.reserve_pool(pool, self.auth.policy.max_pools)
        except TooManyPools as exc:
            await self._refuse_limit(
                context,
                "pools",
                f"registration refused: there are {exc.pools} pools, the most the registration "
                "policy allows; remove unused pools or raise max_pools",
            )
        return False

    @staticmethod
    async def _require_lease(context: Any, method: str, lease_id: str) -> None:
        if not lease_id:
            metrics.REGISTRATIONS.labels(method, "INVALID_ARGUMENT").inc()
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{method.lower()} refused: lease_id is empty; send the lease_id that Register "
                "returned",
            )

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
        except NotOwner as exc:
            metrics.AUTH_REFUSALS.labels(method, "PERMISSION_DENIED", "not_owner").inc()
            self._refusal_log.warning(
                "auth:not_owner", "registration refused method=%s reason=not_owner peer=%s: %s",
                method, context.peer(), exc,
            )  # fmt: skip
            await self._fail(
                context, method, grpc.StatusCode.PERMISSION_DENIED, f"{verb} refused: {exc}"
            )
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
        grant = await self._authorize(context, "Register", request.pool)
        config: PoolConfig | None = None

        async def validate() -> tuple[str, int, int, str, dict[str, str], int, str]:
            nonlocal config
            pool = v.check_pool_name(request.pool)
            port = v.check_port(request.port)
            weight = v.check_weight(request.weight or 1)
            zone = v.check_zone(request.zone)
            metadata = v.check_metadata(dict(request.metadata))
            ttl_ms = 0
            if request.HasField("lease_ttl"):
                ttl_ms = v.check_lease_ttl_ms(_duration_ms(request.lease_ttl))
            # A pool that registration creates takes the defaults.
            config = await self.store.get_pool(pool)
            rules = (config or PoolConfig(name=pool)).registration
            ip = await bind_address(
                rules, pool, request.host, port, context.peer(), context.auth_context(),
                allow_special=grant.allow_special_addresses, bound=grant.address,
            )  # fmt: skip
            check_asks(rules, pool, weight, ttl_ms)
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
        except AddressRefused as exc:
            metrics.AUTH_REFUSALS.labels("Register", "PERMISSION_DENIED", "address_policy").inc()
            self._refusal_log.warning(
                "auth:address_policy", "registration refused reason=address_policy peer=%s: %s",
                context.peer(), exc,
            )  # fmt: skip
            await self._fail(context, "Register", grpc.StatusCode.PERMISSION_DENIED, str(exc))
            raise AssertionError("unreachable: abort raises") from None
        except Unavailable as exc:
            await self._fail(
                context, "Register", grpc.StatusCode.UNAVAILABLE, f"registry unavailable: {exc}"
            )
            raise AssertionError("unreachable: abort raises") from None

        async def register():  # type: ignore[no-untyped-def]
            exists = await self._check_room(context, grant, pool, config is not None)
            try:
                return await self.store.register(
                    pool=pool, host=request.host or ip, ip=ip, port=port, weight=weight,
                    zone=zone, metadata=metadata, lease_ttl_ms=ttl_ms,
                    create_pool=exists or grant.create, actor=f"registration:{grant.principal}",
                    max_backends=grant.max_backends, owner=grant.principal,
                )  # fmt: skip
            except PoolFull as exc:
                await self._refuse_limit(
                    context,
                    "backends_per_pool",
                    f"registration refused: pool {pool!r} has {exc.backends} backends, the most "
                    "its registration policy allows (max_backends)",
                )
                raise AssertionError("unreachable: abort raises") from None
            except Exception:
                if not exists:  # give back the name reserved for the new pool
                    await self.store.release_pool(pool)
                raise

        lease = await self._run(
            context,
            "Register",
            "registration",
            register,
            "; pools are created by an operator (admin API), or by a registration policy "
            "that allows creation",
        )
        log.info(
            "registered pool=%s backend=%s addr=%s:%d weight=%d ttl_ms=%d by=%s",
            pool, lease.backend_id, ip, port, weight, lease.ttl_ms, grant.principal,
        )  # fmt: skip
        response = pb.RegisterResponse(
            backend_id=lease.backend_id, lease_id=lease.lease_id, address=f"{ip}:{port}"
        )
        response.lease_ttl.FromMilliseconds(lease.ttl_ms)
        response.heartbeat_interval.FromMilliseconds(max(lease.ttl_ms // 3, 100))
        return response

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:  # noqa: N802
        grant = await self._authorize(context, "Heartbeat", request.pool)
        await self._require_lease(context, "Heartbeat", request.lease_id)
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
                request.pool, request.backend_id, request.lease_id, load, owner=grant.principal
            )

        ttl = await self._run(context, "Heartbeat", "heartbeat", beat, "; register again")
        response = pb.HeartbeatResponse()
        response.lease_ttl.FromMilliseconds(ttl)
        return response

    async def Deregister(
        self, request: pb.DeregisterRequest, context: Any
    ) -> pb.DeregisterResponse:  # noqa: N802
        grant = await self._authorize(context, "Deregister", request.pool)
        await self._require_lease(context, "Deregister", request.lease_id)

        async def leave() -> None:
            v.check_pool_name(request.pool)
            await self.store.deregister(
                request.pool,
                request.backend_id,
                request.lease_id,
                actor=f"registration:{grant.principal}",
                owner=grant.principal,
            )

        await self._run(context, "Deregister", "deregistration", leave)
        log.info("deregistered pool=%s backend=%s", request.pool, request.backend_id)
        return pb.DeregisterResponse()

    async def Drain(self, request: pb.DrainRequest, context: Any) -> pb.DrainResponse:  # noqa: N802
        grant = await self._authorize(context, "Drain", request.pool)
        await self._require_lease(context, "Drain", request.lease_id)

        async def drain() -> bool:
            v.check_pool_name(request.pool)
            return await self.store.drain(
                request.pool,
                request.backend_id,
                request.lease_id,
                actor=f"registration:{grant.principal}",
                owner=grant.principal,
            )

        if await self._run(context, "Drain", "drain", drain):
            log.info("draining pool=%s backend=%s", request.pool, request.backend_id)
        return pb.DrainResponse()


__all__ = ["RegistryService", "resolve_host"]
