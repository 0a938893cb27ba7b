"""The faults, one per scenario. Each function injects its fault into a
running ChaosLab, waits `seconds` where the fault has a length, undoes it,
and returns a note for the table (or ""). ChaosLab.repair() afterwards
brings back anything a scenario left down."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from lookaside.chaos.cluster import ChaosLab, ClusterChaosLab
from lookaside_registry import keys

Scenario = Callable[[ChaosLab, float], str]


def redis_pause(lab: ChaosLab, seconds: float) -> str:
    lab.redis.pause()
    time.sleep(seconds)
    lab.redis.resume()
    return ""


# After Redis comes back the reapers evict no pre-outage lease for --outage-grace
# (15 s by default) and then catch up: the next scenario starts after that.
AFTER_REDIS_RESTART = 16.0


def redis_restart_empty(lab: ChaosLab, seconds: float) -> str:
    lab.redis.restart(wipe=True)
    lab.cooldown = AFTER_REDIS_RESTART
    return ""


def redis_stale_snapshot(lab: ChaosLab, seconds: float) -> str:
    """A snapshot with 4 backends; one then leaves (deregisters); Redis
    comes back from the snapshot, which still lists the one that left."""
    snap = str(lab.dir / "stale.rdb")
    lab.redis.snapshot(snap)
    gone = lab.backends[-1]
    gone.terminate()
    gone.wait_stopped(15)
    lab.wait_serving(30, lab.n_backends - 1)
    time.sleep(seconds)
    lab.fault_at = time.monotonic()
    lab.redis.restart(rdb=snap)
    lab.cooldown = AFTER_REDIS_RESTART
    return f"{gone.name} left before the restore"


def link_cut(lab: ChaosLab, seconds: float) -> str:
    assert lab.proxy is not None
    lab.proxy.cut()
    time.sleep(seconds)
    lab.proxy.heal()
    return ""


def link_slow(lab: ChaosLab, seconds: float) -> str:
    assert lab.proxy is not None
    lab.proxy.slow(0.5)
    time.sleep(seconds)
    lab.proxy.heal()
    return ""


def _restart(lab: ChaosLab, i: int, sig: signal.Signals, down: float) -> None:
    proc = lab.balancers[i]
    proc.signal(sig)
    proc.wait_stopped(30)
    time.sleep(down)
    proc.start()
    proc.wait_ready(60)


def replica_kill(lab: ChaosLab, seconds: float) -> str:
    _restart(lab, 0, signal.SIGKILL, seconds)
    return ""


def replica_term(lab: ChaosLab, seconds: float) -> str:
    _restart(lab, 0, signal.SIGTERM, seconds)
    return ""


def replicas_rolling(lab: ChaosLab, seconds: float) -> str:
    for i in range(len(lab.balancers)):
        _restart(lab, i, signal.SIGTERM, 0.5)
        time.sleep(seconds / 2)
    return ""


def backend_kill(lab: ChaosLab, seconds: float) -> str:
    lab.backends[0].signal(signal.SIGKILL)
    time.sleep(seconds)
    return ""


def backend_stop(lab: ChaosLab, seconds: float) -> str:
    lab.backends[0].signal(signal.SIGSTOP)
    time.sleep(seconds)
    lab.backends[0].signal(signal.SIGCONT)
    return ""


def backend_blackhole(lab: ChaosLab, seconds: float) -> str:
    """A fifth backend that answers no call while its health says SERVING."""
    proc = lab.backend("blackhole", "--blackhole-percent", "1")
    lab.extra.append(proc)
    lab.fault_at = time.monotonic()
    proc.start()
    proc.wait_ready(60)
    time.sleep(seconds)
    return "a 5th backend black-holes every call"


def pubsub_drop(lab: ChaosLab, seconds: float) -> str:
    reply = lab.redis.command("CLIENT", "KILL", "TYPE", "pubsub")
    time.sleep(seconds)
    return f"{int(reply[1:].strip() or 0)} pub/sub connections dropped"


def registration_burst(lab: ChaosLab, seconds: float, count: int = 1000) -> str:
    """`count` registrations in another pool, 50 at a time, during the load."""
    import grpc.aio

    from lookaside_proto.registry.v1 import registry_pb2, registry_pb2_grpc
    from lookaside_registry.model import PoolConfig, RegistrationRules

    refused: Counter[str] = Counter()
    ca = Path(lab.ca).read_bytes() if lab.ca else None

    async def burst() -> int:
        # The pool exists first (pools are made by operators, not by
        # registration), and every call carries that pool's own token. This
        # is a registrar registering addresses other than its own:
        # address_policy any.
        store = lab.store()
        rules = RegistrationRules(address_policy="any")
        await store.put_pool(
            PoolConfig(name=f"{lab.pool}-burst", registration=rules), actor="chaos"
        )
        await store.close()
        metadata = (("authorization", f"Bearer {lab.tokens[f'{lab.pool}-burst']}"),)
        address = lab.balancer_addrs.split(",")[0]
        if ca is not None:
            channel = grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca))
        else:
            channel = grpc.aio.insecure_channel(address)
        stub = registry_pb2_grpc.RegistryStub(channel)
        sem = asyncio.Semaphore(50)
        ok = 0

        async def one(i: int) -> None:
            nonlocal ok
            async with sem:
                req = registry_pb2.RegisterRequest(
                    pool=f"{lab.pool}-burst", host=f"127.0.{1 + i // 250}.{1 + i % 250}", port=9
                )
                try:
                    await stub.Register(req, timeout=30, metadata=metadata)
                    ok += 1
                except grpc.aio.AioRpcError as exc:
                    refused[f"{exc.code().name}: {(exc.details() or '')[:60]}"] += 1

        await asyncio.gather(*(one(i) for i in range(count)))
        await channel.close()
        return ok

    started = time.monotonic()
    ok = asyncio.run(burst())
    took = time.monotonic() - started
    time.sleep(seconds)

    async def remove() -> None:
        store = lab.store()
        await store.delete_pool(f"{lab.pool}-burst")
        await store.close()

    asyncio.run(remove())
    why = "; ".join(f"{n} {reason}" for reason, n in refused.most_common(2))
    return f"{ok} of {count} registered in {took:.1f}s" + (f" (refused: {why})" if why else "")


def cluster_failover(lab: ChaosLab, seconds: float) -> str:
    """SIGKILL of the master that holds the pool's slot (its keys share
    the `{pool}` hash tag); its replica is promoted by the cluster itself
    (cluster-node-timeout 1 s), not by a CLUSTER FAILOVER."""
    if not isinstance(lab, ClusterChaosLab):
        raise TypeError("cluster-failover runs in the Redis Cluster lab (ClusterChaosLab)")
    cluster = lab.redis_cluster
    slot = cluster.keyslot(keys.config(lab.pool))
    master = cluster.master_of(slot)
    lab.fault_at = time.monotonic()
    cluster.node(master.port).kill()
    promoted = cluster.wait_master_changed(slot, master.port, timeout=60)
    took = time.monotonic() - lab.fault_at
    time.sleep(seconds)
    return (
        f"master :{master.port} of slot {slot} SIGKILLed; "
        f"replica :{promoted.port} promoted after {took:.1f}s"
    )


# The scenarios that need the Redis Cluster lab; the rest run on one Redis.
CLUSTER_SCENARIOS = frozenset({"cluster-failover"})

# name -> (function, default seconds, what it does)
SCENARIOS: dict[str, tuple[Scenario, float, str]] = {
    "redis-pause": (redis_pause, 30.0, "Redis SIGSTOPped, then SIGCONT"),
    "redis-restart-empty": (redis_restart_empty, 0.0, "Redis killed, restarted with no data"),
    "redis-stale-snapshot": (
        redis_stale_snapshot,
        15.0,
        "Redis restarted from a snapshot older than a backend's departure",
    ),
    "link-cut": (link_cut, 10.0, "the link between replica 1 and Redis cut (partition)"),
    "link-slow": (link_slow, 10.0, "the link between replica 1 and Redis slowed by 0.5 s a chunk"),
    "replica-kill": (replica_kill, 3.0, "replica 1 SIGKILLed, restarted after the pause"),
    "replica-term": (replica_term, 3.0, "replica 1 SIGTERMed, restarted after the pause"),
    "replicas-rolling": (replicas_rolling, 6.0, "both replicas restarted one after the other"),
    "backend-kill": (backend_kill, 10.0, "backend 1 SIGKILLed"),
    "backend-stop": (backend_stop, 15.0, "backend 1 SIGSTOPped, then SIGCONT"),
    "backend-blackhole": (
        backend_blackhole,
        20.0,
        "a backend that answers no call while health stays SERVING",
    ),
    "pubsub-drop": (pubsub_drop, 5.0, "CLIENT KILL TYPE pubsub"),
    "registration-burst": (registration_burst, 5.0, "1,000 registrations in another pool"),
    "cluster-failover": (
        cluster_failover,
        5.0,
        "Redis Cluster: the master of the pool's slot SIGKILLed, its replica promoted",
    ),
}
