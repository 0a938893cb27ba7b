"""A capacity model past one host, from per-operation costs measured here.

    .venv/bin/python -m bench capacity plan --clients 1000000 --backends 1000 --pools 10 \
        --churn 0.5 [--subset-size 20] [--cores 16 --memory-gib 64] [--json]
    .venv/bin/python -m bench capacity costs [--streams 1000 10000] [--json FILE]
    .venv/bin/python -m bench capacity check --streams 1000    # the model against a run

`plan` says, for N clients (one BalanceLoad stream each), P pools of M
backends, a churn rate (backend registrations plus departures per second,
over the fleet) and an optional subset size, how many balancer hosts, how
much Redis (and whether one Redis suffices or a Redis Cluster is needed),
and how much fan-out bandwidth. `costs` measures the per-operation costs
the model uses on this machine: Redis commands, Redis CPU and bytes per
registration, heartbeat, deregistration, snapshot read, report flush and
replica touch (from a private redis-server's INFO commandstats); the bytes
of a server list per entry (the balancer's own serializer); and balancer
CPU per stream and update and memory per stream (bench/streams.py at each
--streams size; a straight-line fit over the sizes gives the per-update
fixed cost). `check` runs bench/streams.py once and compares what the
model predicts for that size (memory, CPU per update) with what it
measured. docs/capacity.md has the model's reasoning and a worked fleet.

COSTS below are the figures `costs` measured on this project's 2-core
machine under load from other work (see docs/capacity.md for the run): CPU
figures from there are upper bounds for a quiet core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Per HTTP/2 DATA frame (9 bytes) and gRPC message prefix (5 bytes), plus a
# TLS record's header and tag (5 + 16 bytes, TLS 1.3 AES-GCM; one record per
# message at these sizes).
FRAMING_BYTES = 9 + 5 + 21


@dataclass(frozen=True)
class Costs:
    """Per-operation costs. CPU in microseconds of one core, memory in bytes."""

    # The balancer: per stream and list written, one stream per connection
    # as clients have them (grpc.aio's write, the send, which on loopback
    # includes the receiver's side of TCP, the bookkeeping), and per update
    # whatever the streams (the registration RPC, the Redis script, the
    # snapshot, the payload).
    cpu_us_per_stream_update: float = 56.0
    cpu_ms_per_update_fixed: float = 11.0
    # Per client load report read, checked and summed (upper bound: one
    # balancer process's saturation rate in bench/reports.py, about 30,000
    # reports/s with the senders on the same cores).
    cpu_us_per_report: float = 35.0
    # Balancer RSS per open stream (HTTP/2 stream state, the call, the
    # stream's objects), and per process at rest.
    bytes_per_stream: float = 25.5 * 1024
    bytes_per_process: float = 68 * 2**20
    # And per client connection (HTTP/2 transport, its buffers): a client
    # has one connection for its one stream, where the benchmark puts 100
    # streams on each.
    bytes_per_connection: float = 15.5 * 1024
    # A serialized server list: fixed part and per entry (IPv4, port, token
    # "<backend id>.<epoch>").
    list_bytes_fixed: float = 3.0
    list_bytes_per_entry: float = 38.0
    # Redis: commands (those a script calls counted too) and the server's
    # CPU (user + system, its network work included) per operation, one
    # operation at a time as backends send them.
    redis_cmds_per_registration: float = 12.0
    redis_us_per_registration: float = 139.0
    redis_cmds_per_heartbeat: float = 5.0
    redis_us_per_heartbeat: float = 87.0
    redis_cmds_per_deregistration: float = 11.0
    redis_us_per_deregistration: float = 86.0
    # One balancer process's read of a pool after a change: fixed part and
    # per backend (commands, CPU, bytes sent by Redis).
    redis_cmds_per_snapshot: float = 5.0
    redis_us_per_snapshot_fixed: float = 25.0
    redis_us_per_snapshot_backend: float = 2.23
    redis_bytes_per_snapshot_backend: float = 532.0
    # One process's flush of one pool's summed reports, and its replica
    # touch (once a second).
    redis_cmds_per_flush: float = 7.0
    redis_us_per_flush: float = 37.0
    redis_cmds_per_touch: float = 4.0
    redis_us_per_touch: float = 25.0
    # Redis memory per registered backend (its hash, lease, owner, index).
    redis_bytes_per_backend: float = 1000.0

    def list_bytes(self, entries: int) -> float:
        """Bytes on the wire of one server list message of `entries`."""
        return self.list_bytes_fixed + entries * self.list_bytes_per_entry + FRAMING_BYTES


COSTS = Costs()


@dataclass(frozen=True)
class Host:
    """A balancer host: one worker process per core."""

    cores: int = 16
    memory_gib: float = 64.0
    # Keep this share of CPU and memory free (bursts, reconnect storms,
    # a neighbour host failing).
    cpu_headroom: float = 0.5
    memory_headroom: float = 0.3
    network_gbit: float = 10.0
    # Streams per worker process at most: the largest run measured
    # (bench/streams.py --streams 50000); past it, the model would guess.
    max_streams_per_process: int = 50_000
    # Hosts beyond the load, so that losing one moves its clients to the
    # others without passing any limit.
    spare_hosts: int = 1


@dataclass(frozen=True)
class Fleet:
    clients: int
    backends_per_pool: int
    pools: int = 1
    # Backend registrations plus departures per second, over all pools.
    churn_per_s: float = 0.1
    subset_size: int | None = None
    report_interval_s: float = 10.0
    heartbeat_interval_s: float = 5.0
    flush_interval_s: float = 1.0
    # A list change reaches the last stream of a process within this.
    fanout_target_s: float = 0.25


# One Redis main thread: keep it under this share of a core, and its
# memory under this.
REDIS_CPU_BUDGET = 0.5
REDIS_MEMORY_BUDGET_GIB = 25.0
REDIS_OUTPUT_BUDGET_MBIT = 2000.0


@dataclass
class Plan:
    fleet: Fleet
    host: Host
    # Per client stream: the entries of its list, and the share of the
    # pool's changes that reach it.
    list_entries: int
    change_reach: float
    # Streams one worker process can hold within the fan-out target, within
    # its CPU budget, and (per host) within memory.
    streams_per_process_latency: int
    streams_per_process_cpu: int
    streams_per_host_memory: int
    streams_per_host_network: int
    streams_per_host: int
    limited_by: str
    hosts: int
    processes: int
    # Balancer work per host at that load.
    cpu_cores_per_host: float
    memory_gib_per_host: float
    fanout_s_per_change: float
    # Fan-out: per list change, and per second over the fleet.
    bytes_per_list: float
    streams_per_change: float
    fanout_bytes_per_change: float
    fanout_mbit_per_s: float
    fanout_mbit_per_s_per_host: float
    connections_per_backend: float
    # Redis.
    redis_ops_per_s: float
    redis_cpu_cores: float
    redis_memory_gib: float
    redis_output_mbit_per_s: float
    redis_shards: int
    redis_cluster: bool
    redis_why: str
    breakdown: dict[str, dict[str, float]] = field(default_factory=dict)


def plan(fleet: Fleet, host: Host = Host(), costs: Costs = COSTS) -> Plan:
    """Balancer hosts, Redis and fan-out bandwidth for `fleet`."""
    m = fleet.backends_per_pool
    k = min(fleet.subset_size or m, m)
    # With subsetting, a backend's change reaches the clients whose subset
    # holds it: k of every m.
    reach = k / m
    changes_per_pool_s = fleet.churn_per_s / fleet.pools
    t_stream = costs.cpu_us_per_stream_update / 1e6
    t_report = costs.cpu_us_per_report / 1e6

    # Latency: one process writes a change to its streams of that pool
    # (those reached) one after the other, on one core; its streams are
    # spread over the pools.
    budget_s = max(fleet.fanout_target_s - costs.cpu_ms_per_update_fixed / 1e3, 1e-3)
    lat = budget_s / (t_stream * reach) * fleet.pools
    # CPU per stream per second: its share of list writes, and its reports.
    cpu_per_stream = changes_per_pool_s * reach * t_stream + t_report / fleet.report_interval_s
    fixed_cpu = fleet.churn_per_s * costs.cpu_ms_per_update_fixed / 1e3
    usable = 1.0 - host.cpu_headroom
    cpu = (usable - min(fixed_cpu, usable / 2)) / cpu_per_stream
    usable_mem = host.memory_gib * 2**30 * (1 - host.memory_headroom)
    client_bytes = costs.bytes_per_stream + costs.bytes_per_connection
    mem = (usable_mem - host.cores * costs.bytes_per_process) / client_bytes
    # The network: a change's lists leave the host within the fan-out
    # target, and all changes' lists within the headroom.
    list_bytes = costs.list_bytes(k)
    net_bytes_s = host.network_gbit * 1e9 / 8
    burst = net_bytes_s * fleet.fanout_target_s * fleet.pools / (reach * list_bytes)
    sustained = net_bytes_s * usable / max(changes_per_pool_s * reach * list_bytes, 1e-9)
    limits = {
        "streams measured per process": float(host.max_streams_per_process * host.cores),
        "fan-out latency": lat * host.cores,
        "CPU": cpu * host.cores,
        "memory": mem,
        "network within the fan-out target": burst,
        "network": sustained,
    }
    limited_by = min(limits, key=lambda name: limits[name])
    per_host = max(int(limits[limited_by]), 1)
    hosts = math.ceil(fleet.clients / per_host) + host.spare_hosts
    processes = hosts * host.cores
    streams_here = fleet.clients / hosts
    per_proc_here = streams_here / host.cores

    entry_bytes = list_bytes
    streams_per_change = fleet.clients / fleet.pools * reach
    fanout_change = streams_per_change * entry_bytes
    fanout_s = fleet.churn_per_s * fanout_change
    fanout_mbit = fanout_s * 8 / 1e6

    # Redis: backends' own calls, every process's reads and flushes.
    backends = m * fleet.pools
    regs = deregs = fleet.churn_per_s / 2
    heartbeats = backends / fleet.heartbeat_interval_s
    # Each change is read by every process that has streams of the pool.
    procs_per_pool = min(processes, max(1.0, fleet.clients / fleet.pools))
    snapshots = fleet.churn_per_s * procs_per_pool
    flushes = processes * min(fleet.pools, max(1.0, per_proc_here)) / fleet.flush_interval_s
    touches = processes * 1.0
    snapshot_us = costs.redis_us_per_snapshot_fixed + m * costs.redis_us_per_snapshot_backend
    rows = {
        "registrations": (regs, costs.redis_cmds_per_registration, costs.redis_us_per_registration),
        "deregistrations": (
            deregs,
            costs.redis_cmds_per_deregistration,
            costs.redis_us_per_deregistration,
        ),
        "heartbeats": (heartbeats, costs.redis_cmds_per_heartbeat, costs.redis_us_per_heartbeat),
        "snapshot reads": (snapshots, costs.redis_cmds_per_snapshot, snapshot_us),
        "report flushes": (flushes, costs.redis_cmds_per_flush, costs.redis_us_per_flush),
        "replica touches": (touches, costs.redis_cmds_per_touch, costs.redis_us_per_touch),
    }
    breakdown = {
        name: {"per_s": rate, "commands_per_s": rate * cmds, "cpu_cores": rate * us / 1e6}
        for name, (rate, cmds, us) in rows.items()
    }
    redis_ops = sum(r["commands_per_s"] for r in breakdown.values())
    redis_cpu = sum(r["cpu_cores"] for r in breakdown.values())
    redis_mem = backends * costs.redis_bytes_per_backend / 2**30
    redis_out = snapshots * m * costs.redis_bytes_per_snapshot_backend * 8 / 1e6
    # Keys are per pool (one hash tag): a Cluster spreads pools over shards,
    # never one pool over several, and the change channel reaches every
    # process whatever the shard.
    need = max(
        redis_cpu / REDIS_CPU_BUDGET,
        redis_mem / REDIS_MEMORY_BUDGET_GIB,
        redis_out / REDIS_OUTPUT_BUDGET_MBIT,
    )
    shards = max(1, math.ceil(need))
    why = (
        f"CPU {redis_cpu:.2f} of one core (budget {REDIS_CPU_BUDGET}), memory {redis_mem:.2f} GiB "
        f"(budget {REDIS_MEMORY_BUDGET_GIB:g}), snapshot output {redis_out:.0f} Mbit/s "
        f"(budget {REDIS_OUTPUT_BUDGET_MBIT:g})"
    )
    if shards > fleet.pools:
        why += f"; more shards than pools ({fleet.pools}): one pool's keys live on one shard"
    return Plan(
        fleet=fleet,
        host=host,
        list_entries=k,
        change_reach=reach,
        streams_per_process_latency=int(lat),
        streams_per_process_cpu=int(cpu),
        streams_per_host_memory=int(mem),
        streams_per_host_network=int(min(burst, sustained)),
        streams_per_host=per_host,
        limited_by=limited_by,
        hosts=hosts,
        processes=processes,
        cpu_cores_per_host=streams_here * cpu_per_stream + fixed_cpu,
        memory_gib_per_host=(
            streams_here * costs.bytes_per_stream + host.cores * costs.bytes_per_process
        )
        / 2**30,  # fmt: skip
        fanout_s_per_change=costs.cpu_ms_per_update_fixed / 1e3
        + per_proc_here / fleet.pools * reach * t_stream,
        bytes_per_list=entry_bytes,
        streams_per_change=streams_per_change,
        fanout_bytes_per_change=fanout_change,
        fanout_mbit_per_s=fanout_mbit,
        fanout_mbit_per_s_per_host=fanout_mbit / hosts,
        connections_per_backend=fleet.clients / fleet.pools * k / m,
        redis_ops_per_s=redis_ops,
        redis_cpu_cores=redis_cpu,
        redis_memory_gib=redis_mem,
        redis_output_mbit_per_s=redis_out,
        redis_shards=shards,
        redis_cluster=shards > 1,
        redis_why=why,
        breakdown=breakdown,
    )


def describe(p: Plan) -> str:
    f, h = p.fleet, p.host
    subset = f"subset_size {f.subset_size}" if f.subset_size else "no subsetting"
    lines = [
        f"{f.clients:,} clients, {f.pools} pool{'s' if f.pools != 1 else ''} of {f.backends_per_pool:,} backends, "
        f"{f.churn_per_s:g} backend changes/s, {subset}; hosts of {h.cores} cores, "
        f"{h.memory_gib:g} GiB",
        f"  each client's list: {p.list_entries} entries, {p.bytes_per_list:,.0f} bytes; "
        f"a change reaches {p.change_reach:.1%} of its pool's clients",
        f"  streams per process: {p.streams_per_process_latency:,} (fan-out within "
        f"{f.fanout_target_s * 1000:.0f} ms), {p.streams_per_process_cpu:,} (CPU); per host "
        f"{p.streams_per_host_memory:,} (memory), {p.streams_per_host_network:,} (network)",
        f"  balancer hosts: {p.hosts:,} with {h.spare_hosts} spare ({p.processes:,} processes, "
        f"{p.streams_per_host:,} streams per host at most, limited by {p.limited_by}); "
        f"per host {p.cpu_cores_per_host:.2f} cores busy, {p.memory_gib_per_host:.1f} GiB",
        f"  fan-out: {p.streams_per_change:,.0f} lists per change, "
        f"{p.fanout_bytes_per_change / 1e6:,.2f} MB per change, {p.fanout_mbit_per_s:,.1f} Mbit/s "
        f"over the fleet ({p.fanout_mbit_per_s_per_host:,.2f} per host); a change reaches a "
        f"process's last stream in {p.fanout_s_per_change * 1000:.0f} ms",
        f"  connections per backend: {p.connections_per_backend:,.0f}",
        f"  Redis: {p.redis_ops_per_s:,.0f} commands/s, {p.redis_cpu_cores:.2f} cores, "
        f"{p.redis_memory_gib:.2f} GiB, {p.redis_output_mbit_per_s:,.0f} Mbit/s of snapshot reads: "
        + (f"a Redis Cluster of {p.redis_shards} shards" if p.redis_cluster else "one Redis")
        + f" ({p.redis_why})",
    ]
    for name, row in p.breakdown.items():
        lines.append(
            f"    {name:16s} {row['per_s']:>12,.1f}/s {row['commands_per_s']:>12,.0f} commands/s "
            f"{row['cpu_cores']:6.3f} cores"
        )
    return "\n".join(lines)


# -- measuring the costs ------------------------------------------------------


def _commands(redis_client: Any) -> int:
    """Commands the Redis server has run so far (those a script calls
    included), INFO itself excluded."""
    stats = redis_client.info("commandstats")
    return sum(int(row["calls"]) for name, row in stats.items() if name != "cmdstat_info")


def _cpu_us(redis_client: Any) -> float:
    """The Redis server's CPU time so far (user + system), in microseconds."""
    cpu = redis_client.info("cpu")
    return (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])) * 1e6


def _output_bytes(redis_client: Any) -> int:
    return int(redis_client.info("stats")["total_net_output_bytes"])


async def _redis_costs(url: str, backends: int) -> dict[str, float]:
    import redis

    from lookaside_registry.model import PoolConfig
    from lookaside_registry.store import RegistryStore

    sync = redis.Redis.from_url(url)
    store = RegistryStore.from_url(url)
    pool = "capacity"
    await store.put_pool(PoolConfig.from_flat(pool, health_checks=False))
    out: dict[str, float] = {}

    async def measure(name: str, n: int, op: Any) -> None:
        c0, u0, b0 = _commands(sync), _cpu_us(sync), _output_bytes(sync)
        for i in range(n):
            await op(i)
        c1, u1, b1 = _commands(sync), _cpu_us(sync), _output_bytes(sync)
        out[f"redis_cmds_per_{name}"] = (c1 - c0) / n
        out[f"redis_us_per_{name}"] = (u1 - u0) / n
        out[f"redis_bytes_out_per_{name}"] = (b1 - b0) / n

    mem0 = int(sync.info("memory")["used_memory"])
    leases: list[Any] = []

    async def register(i: int) -> None:
        leases.append(
            await store.register(
                pool=pool, host=f"h{i}", ip=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                port=8000 + i % 1000, lease_ttl_ms=600_000,
            )
        )  # fmt: skip

    await measure("registration", backends, register)
    out["redis_bytes_per_backend"] = (int(sync.info("memory")["used_memory"]) - mem0) / backends

    async def heartbeat(i: int) -> None:
        lease = leases[i]
        await store.heartbeat(pool, lease.backend_id, lease.lease_id)

    await measure("heartbeat", backends, heartbeat)

    async def snapshot(i: int) -> None:
        await store.snapshot(pool)

    await measure("snapshot", 20, snapshot)
    out["redis_bytes_per_snapshot_backend"] = out["redis_bytes_out_per_snapshot"] / backends

    async def flush(i: int) -> None:
        await store.add_reports(
            pool, f"batch{i}", int(time.time()) // 10,
            {"num_calls_started": 100, "num_calls_finished": 100}, {}, [],
        )  # fmt: skip

    await measure("flush", 50, flush)

    async def touch(i: int) -> None:
        await store.touch_replica("replica-1", 3000)

    await measure("touch", 50, touch)

    async def deregister(i: int) -> None:
        lease = leases[i]
        await store.deregister(pool, lease.backend_id, lease.lease_id)

    await measure("deregistration", backends, deregister)
    await store.close()
    sync.close()
    return out


def _list_costs() -> dict[str, float]:
    from balancer_server import lists

    def size(n: int) -> int:
        entries = [
            lists.Entry(f"10.0.{i // 256}.{i % 256}", 8080, f"{i:016x}.a1b2c3d4") for i in range(n)
        ]
        return len(lists.server_list_payload(entries))

    # Tokens as the balancer makes them: a 16-hex-digit id, a dot, an 8-hex
    # epoch (see lists.build_entries).
    small, big = size(10), size(1000)
    per_entry = (big - small) / 990
    return {"list_bytes_per_entry": per_entry, "list_bytes_fixed": small - 10 * per_entry}


def _stream_costs(streams: int, per_connection: int) -> dict[str, Any]:
    clients = 1 if streams <= 2000 else 2
    done = subprocess.run(
        [sys.executable, str(BENCH / "streams.py"), "--streams", str(streams),
         "--clients", str(clients), "--updates", "3", "--wait", "600",
         "--streams-per-connection", str(per_connection)],
        capture_output=True, text=True, timeout=900, check=True, cwd=REPO,
    )  # fmt: skip
    out = done.stdout
    kib = re.search(r"([\d.]+) KiB per stream", out)
    rss = re.search(r"balancer RSS ([\d.]+) MiB -> ([\d.]+) MiB", out)
    cpu = re.search(r"CPU per update .*: median ([\d.]+) ms", out)
    fan = re.search(r"fanout_seconds\): mean (\d+) ms", out)
    p99 = re.search(r"median of the rounds: p50 (\d+) ms, p99 (\d+) ms", out)
    refused = re.search(r"refused (\d+),", out)
    if not (kib and rss and cpu and fan and p99 and refused):
        raise SystemExit(f"bench/streams.py printed no figures:\n{out}\n{done.stderr[-2000:]}")
    return {
        "streams": streams,
        "per_connection": per_connection,
        "connections": -(-streams // per_connection),
        "refused": int(refused.group(1)),
        "refusals": dict(
            (why, int(n)) for n, why in re.findall(r"^    refused (\d+): (.*)$", out, re.M)
        ),
        "kib_per_stream": float(kib.group(1)),
        "rss_before_mib": float(rss.group(1)),
        "rss_after_mib": float(rss.group(2)),
        "cpu_ms_per_update": float(cpu.group(1)),
        "fanout_mean_ms": float(fan.group(1)),
        "registration_to_list_p50_ms": float(p99.group(1)),
        "registration_to_list_p99_ms": float(p99.group(2)),
    }


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares line y = a + b x through the points: (a, b)."""
    n = len(points)
    if n == 1:
        x, y = points[0]
        return 0.0, y / x
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return my - b * mx, b


def measure_costs(stream_sizes: list[int], backends: int = 500) -> dict[str, Any]:
    """Every cost the model uses. The streams: at each size one stream per
    connection, as clients have them (CPU per stream and update, memory per
    client), and at the first size 100 streams per connection too (memory
    per stream alone; the difference is the connection's)."""
    from lookaside.redis_process import RedisProcess

    with RedisProcess() as redis_process:
        measured: dict[str, Any] = asyncio.run(_redis_costs(redis_process.url, backends))
    measured.update(_list_costs())
    runs = [_stream_costs(n, 1) for n in stream_sizes]
    shared = _stream_costs(stream_sizes[0], 100)
    a, b = fit([(r["streams"], r["cpu_ms_per_update"]) for r in runs])
    measured["cpu_ms_per_update_fixed"] = max(a, 0.0)
    measured["cpu_us_per_stream_update"] = b * 1000
    per_client = max(r["kib_per_stream"] for r in runs) * 1024
    measured["bytes_per_stream"] = shared["kib_per_stream"] * 1024
    measured["bytes_per_connection"] = max(per_client - measured["bytes_per_stream"], 0.0)
    measured["bytes_per_process"] = min(r["rss_before_mib"] for r in runs) * 2**20
    measured["stream_runs"] = [*runs, shared]
    return measured


def costs_from(measured: dict[str, Any], base: Costs = COSTS) -> Costs:
    """`base` with every figure `measured` has."""
    names = {f for f in asdict(base)}
    per_snapshot = measured.get("redis_us_per_snapshot")
    values = {k: float(v) for k, v in measured.items() if k in names}
    if per_snapshot is not None and "backends" in measured:
        values.setdefault("redis_us_per_snapshot_backend", per_snapshot / measured["backends"])
        values.setdefault("redis_us_per_snapshot_fixed", 0.0)
    return replace(base, **values)


# -- the model against a run ---------------------------------------------------


def check(streams: int, per_connection: int = 1, costs: Costs = COSTS) -> dict[str, Any]:
    """Runs bench/streams.py at `streams` and sets the model's predictions
    for that size beside what it measured. The model's CPU per stream is
    that of one stream per connection; with many streams per connection
    the transport sends several lists per write, and the figure is an upper
    bound."""
    run = _stream_costs(streams, per_connection)
    opened = streams - run["refused"]
    connections = -(-opened // per_connection)
    predicted_mib = (
        opened * costs.bytes_per_stream + connections * costs.bytes_per_connection
    ) / 2**20
    measured_mib = run["rss_after_mib"] - run["rss_before_mib"]
    predicted_cpu = costs.cpu_ms_per_update_fixed + opened * costs.cpu_us_per_stream_update / 1e3
    return {
        "streams": streams,
        "per_connection": per_connection,
        "opened": opened,
        "memory_mib": {"predicted": predicted_mib, "measured": measured_mib},
        "cpu_ms_per_update": {"predicted": predicted_cpu, "measured": run["cpu_ms_per_update"]},
        # One core, the loop's own thread: the fan-out cannot be quicker
        # than its CPU time; under contention it is slower.
        "fanout_ms": {"predicted": predicted_cpu, "measured": run["fanout_mean_ms"]},
        "run": run,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench capacity", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="hosts, Redis and bandwidth for a fleet")
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--backends", type=int, required=True, help="backends per pool")
    p.add_argument("--pools", type=int, default=1)
    p.add_argument(
        "--churn", type=float, default=0.1, help="backend changes per second, fleet-wide"
    )
    p.add_argument("--subset-size", type=int)
    p.add_argument("--cores", type=int, default=Host.cores)
    p.add_argument("--memory-gib", type=float, default=Host.memory_gib)
    p.add_argument("--network-gbit", type=float, default=Host.network_gbit)
    p.add_argument("--spare-hosts", type=int, default=Host.spare_hosts)
    p.add_argument("--report-interval", type=float, default=10.0)
    p.add_argument("--json", action="store_true", help="the plan as JSON")
    c = sub.add_parser("costs", help="measure the per-operation costs here")
    c.add_argument("--streams", type=int, nargs="+", default=[1000, 10000])
    c.add_argument("--backends", type=int, default=500)
    c.add_argument("--json", type=Path, metavar="FILE")
    k = sub.add_parser("check", help="the model against one bench/streams.py run")
    k.add_argument("--streams", type=int, default=1000)
    k.add_argument("--streams-per-connection", type=int, default=1)
    args = parser.parse_args(argv)
    if args.command == "plan":
        for name in ("clients", "backends", "pools", "cores"):
            if getattr(args, name) < 1:
                parser.error(f"--{name} must be at least 1")
        if args.subset_size is not None and args.subset_size < 1:
            parser.error("--subset-size must be at least 1")
        fleet = Fleet(
            clients=args.clients, backends_per_pool=args.backends, pools=args.pools,
            churn_per_s=args.churn, subset_size=args.subset_size,
            report_interval_s=args.report_interval,
        )  # fmt: skip
        result = plan(
            fleet,
            Host(
                cores=args.cores, memory_gib=args.memory_gib, network_gbit=args.network_gbit,
                spare_hosts=max(args.spare_hosts, 0),
            ),
        )  # fmt: skip
        print(json.dumps(asdict(result), indent=2) if args.json else describe(result))
        return 0
    if args.command == "costs":
        measured = measure_costs(args.streams, args.backends)
        measured["backends"] = args.backends
        print(json.dumps(measured, indent=2))
        if args.json:
            args.json.write_text(json.dumps(measured, indent=2) + "\n")
        return 0
    print(json.dumps(check(args.streams, args.streams_per_connection), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
