"""The chaos suite's lab, as local processes on loopback: Redis (append-only),
two balancer replicas (the first reaches Redis through a TcpProxy the suite
controls), the DNS responder advertising both, routeguide backends that
register with both, and load clients of every kind.

It runs the production profile (docs/security.md): TLS on the balancers and
backends with a lab CA (the balancers' health checks reach the backends
over TLS, the clients verify both), every pool with its own registration
token (a registration policy), health checks and outlier detection on.
`tls=False` runs it in plaintext."""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import redis

from lookaside.certs import Issued, issue
from lookaside.chaos.proxy import TcpProxy
from lookaside.lab_procs import LabError, Proc
from lookaside.redis_cluster import RedisClusterProcesses
from lookaside.redis_process import RedisProcess, free_port
from lookaside_registry import keys
from lookaside_registry.model import PoolConfig
from lookaside_registry.store import RegistryStore


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


HOST = "127.0.0.1"
ZONE = "lookaside.test"


def chaos_pool(name: str) -> PoolConfig:
    # Load reports every second and outlier judgements every 2 s, and a
    # backend qualifies with 5 calls in an interval: a black hole holds
    # each call it gets for the whole deadline, so at the suite's rates it
    # gets only a few calls per interval. The rest are the defaults.
    return PoolConfig.from_flat(
        name, report_interval_ms=1000, outlier_interval_ms=2000, outlier_request_volume=5
    )


class ChaosLab:
    def __init__(
        self,
        *,
        backends: int = 4,
        clients: tuple[str, ...] = ("thin-sync", "thin-aio", "grpcio-dns"),
        rate: float = 100.0,
        call_timeout: float = 2.0,
        pool: str = "chaos",
        state_file: str = "",
        workdir: str = "",
        retries: bool = True,
        tls: bool = True,
    ) -> None:
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="lookaside-chaos-"))
        self._owns_dir = not workdir
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        self.pool = pool
        self.n_backends = backends
        self.client_kinds = clients
        self.rate = rate
        self.call_timeout = call_timeout
        self.retries = retries  # the clients' retryPolicy on GetFeature
        self.state_file = state_file
        # Registration needs a credential: each pool its own token (the
        # registration policy), passed to backends in the environment.
        self.tokens = {name: secrets.token_urlsafe(24) for name in (pool, f"{pool}-burst")}
        self.registration_token = self.tokens[pool]
        self.certs: Issued | None = issue(self.dir / "certs", zone=ZONE) if tls else None
        self.redis = RedisProcess(host=HOST, persist=True, data_dir=str(self.dir / "redis"))
        self.proxy: TcpProxy | None = None
        self.balancers: list[Proc] = []
        self.backends: list[Proc] = []
        self.clients: dict[str, Proc] = {}
        self.dns: Proc | None = None
        self.extra: list[Proc] = []
        # When a scenario's fault begins later than the scenario itself.
        self.fault_at: float | None = None
        # Seconds the next scenario waits after this one's repair.
        self.cooldown = 0.0

    # -- processes -------------------------------------------------------------

    def _proc(self, name: str, args: list[str], port: int = 0, **kw: object) -> Proc:
        return Proc(name, args, self.dir / "logs" / f"{name}.log", port=port, **kw)  # type: ignore[arg-type]

    @property
    def balancer_addrs(self) -> str:
        return ",".join(f"{HOST}:{b.port}" for b in self.balancers)

    # -- the registry's Redis: one process here, a cluster in ClusterChaosLab ----

    cluster = False

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def redis_flags(self, url: str) -> list[str]:
        return ["--redis-url", url, *(["--redis-cluster"] if self.cluster else [])]

    def store(self) -> RegistryStore:
        return RegistryStore.from_url(self.redis_url, cluster=self.cluster)

    def _start_redis(self) -> list[str]:
        """Starts Redis; the URL each balancer replica uses (replica 1's
        goes through the proxy)."""
        self.redis.start()
        self.proxy = TcpProxy(self.redis.port, HOST).start()
        return [f"redis://{HOST}:{self.proxy.port}/0", self.redis.url]

    def _repair_redis(self) -> None:
        self.redis.resume()
        if self.redis.proc is None or self.redis.proc.poll() is not None:
            self.redis.start()
        if self.proxy:
            self.proxy.heal()

    def _stop_redis(self) -> None:
        self.redis.stop()

    def _backend_values(self) -> list[str]:
        client = redis.Redis.from_url(self.redis.url, socket_timeout=2)
        try:
            return [_text(v) for v in client.hvals(keys.backends(self.pool))]
        finally:
            client.close()

    def _policy(self) -> str:
        """The registration policy: each pool admits its own token only."""
        path = self.dir / "registration-policy.json"
        if not path.exists():
            env = {pool: f"CHAOS_TOKEN_{i}" for i, pool in enumerate(self.tokens)}
            rules = {pool: {"token_env": [env[pool]], "create": True} for pool in self.tokens}
            path.write_text(json.dumps({"pools": rules}, indent=2))
        return str(path)

    def _policy_env(self) -> dict[str, str]:
        return {f"CHAOS_TOKEN_{i}": token for i, token in enumerate(self.tokens.values())}

    def _tls_flags(self) -> list[str]:
        if self.certs is None:
            return []
        return ["--tls-cert", str(self.certs.server_cert), "--tls-key", str(self.certs.server_key)]

    @property
    def ca(self) -> str:
        """The lab CA's file, or "" in plaintext."""
        return str(self.certs.ca) if self.certs else ""

    def balancer(self, i: int, redis_url: str) -> Proc:
        port = free_port(HOST)
        # One process per replica: a fault kills or stops the balancer
        # itself, not a worker its supervisor would start again.
        args = ["balancer", "--listen", f"{HOST}:{port}", *self.redis_flags(redis_url),
                "--workers", "1",
                "--metrics-listen", "", "--replica-id", f"chaos-{i + 1}", "--log-level", "warning",
                "--registration-policy", self._policy(), *self._tls_flags(),
                *(["--backend-tls-ca", self.ca] if self.ca else [])]  # fmt: skip
        if self.state_file:
            args += ["--state-file", self.state_file]
        return self._proc(f"balancer-{i + 1}", args, port, env=self._policy_env())

    def backend(self, name: str, *flags: str) -> Proc:
        port = free_port(HOST)
        return self._proc(
            name,
            ["routeguide", "server", "--listen", f"{HOST}:{port}", "--balancer",
             self.balancer_addrs, "--pool", self.pool, "--log-level", "warning",
             *self._tls_flags(), *(["--balancer-tls-ca", self.ca] if self.ca else []), *flags],
            port,
            backend=True,
            env={"LOOKASIDE_ROUTEGUIDE_REGISTRATION_TOKEN": self.registration_token},
        )  # fmt: skip

    def _write_state_file(self) -> None:
        """The pool's settings as a state file for both replicas, so that a
        Redis that comes back empty gets them back (server_common.state_keeper)."""
        from server_common import declarative as d
        from server_common.schemas.pools import PoolSettings

        doc = d.StateDocument(
            pools=[
                d.PoolState(name=self.pool, config=PoolSettings.from_config(chaos_pool(self.pool)))
            ]
        )
        path = self.dir / "state.yaml"
        path.write_text(d.dump(doc))
        self.state_file = str(path)

    def start(self, ready_timeout: float = 60.0) -> ChaosLab:
        if not self.state_file:
            self._write_state_file()
        urls = self._start_redis()
        asyncio.run(self._put_pool())
        self.balancers = [self.balancer(i, url) for i, url in enumerate(urls)]
        for b in self.balancers:
            b.start()
        dns_port = free_port(HOST)
        self.dns = self._proc(
            "dns",
            ["dns", "--listen", f"{HOST}:{dns_port}", *self.redis_flags(self.redis_url), "--zone",
             ZONE, "--balancers", self.balancer_addrs, "--metrics-listen", "",
             "--log-level", "warning"],
            dns_port,
        ).start()  # fmt: skip
        for b in [*self.balancers, self.dns]:
            b.wait_ready(ready_timeout)
        self.backends = [self.backend(f"backend-{i + 1}") for i in range(self.n_backends)]
        for b in self.backends:
            b.start()
        for b in self.backends:
            b.wait_ready(ready_timeout)
        self.wait_serving(ready_timeout)
        for kind in self.client_kinds:
            self.clients[kind] = self._start_client(kind)
        self.wait_clients_ready(ready_timeout)
        return self

    async def _put_pool(self) -> None:
        store = self.store()
        await store.put_pool(chaos_pool(self.pool))
        await store.close()

    def _start_client(self, kind: str) -> Proc:
        out = self.dir / f"calls-{kind}.txt"
        target = f"{self.pool}.{ZONE}:{self.balancers[0].port}"
        assert self.dns is not None
        args = ["--kind", kind, "--out", str(out), "--pool", self.pool,
                "--balancers", self.balancer_addrs, "--dns", f"{HOST}:{self.dns.port}",
                "--target", target, "--rate", str(self.rate),
                "--timeout", str(self.call_timeout),
                *([] if self.retries else ["--no-retries"]),
                *(["--tls-ca", self.ca] if self.ca else [])]  # fmt: skip
        return self._proc(f"client-{kind}", args, module="lookaside.chaos.load").start()

    def calls_file(self, kind: str) -> Path:
        return self.dir / f"calls-{kind}.txt"

    def wait_clients_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for proc in self.clients.values():
            while "ready" not in proc.log.read_text(errors="replace"):
                proc.check_alive()
                if time.monotonic() > deadline:
                    raise LabError(f"{proc.name} made no successful call (log {proc.log})")
                time.sleep(0.1)

    def serving_count(self) -> int:
        try:
            values = self._backend_values()
        except (redis.RedisError, OSError):
            return -1
        return sum(1 for v in values if '"state":"serving"' in v)

    def wait_serving(self, timeout: float, count: int | None = None) -> None:
        """Until `count` (default: all) backends are serving in Redis."""
        want = self.n_backends if count is None else count
        deadline = time.monotonic() + timeout
        while self.serving_count() != want:
            if time.monotonic() > deadline:
                raise LabError(
                    f"{self.serving_count()} of {want} backends serving after {timeout:g}s"
                )
            time.sleep(0.1)

    def repair(self, timeout: float = 60.0) -> None:
        """Every process back up (after a scenario), then all backends serving."""
        self._repair_redis()
        for proc in [*self.balancers, *([self.dns] if self.dns else []), *self.backends]:
            proc.signal(__import__("signal").SIGCONT)
            if not proc.alive():
                proc.start()
                proc.wait_ready(timeout)
        for proc in self.extra:
            proc.terminate()
            proc.wait_stopped(10)
        self.extra.clear()
        self.wait_serving(timeout)

    def stop(self) -> None:
        for proc in self.clients.values():
            proc.terminate()
        for group in (list(self.clients.values()), self.extra + self.backends):
            for proc in group:
                proc.terminate()
            for proc in group:
                proc.wait_stopped(10)
        services = [*self.balancers, *([self.dns] if self.dns else [])]
        for proc in services:
            proc.terminate()
        for proc in services:
            proc.wait_stopped(15)
        if self.proxy:
            self.proxy.stop()
        self._stop_redis()  # the lab's own Redis: one server, or a cluster

    def cleanup(self) -> None:
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ChaosLab:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ClusterChaosLab(ChaosLab):
    """The same lab on a Redis Cluster of 3 masters and 3 replicas, with a
    node timeout of 1 s (a replica takes over about 2 s after its master
    dies). Both balancer replicas and the DNS responder run with
    --redis-cluster and reach the cluster directly (a cluster client
    follows the nodes' addresses, so there is no proxy to put between)."""

    cluster = True
    NODE_TIMEOUT_MS = 1000

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.redis_cluster = RedisClusterProcesses(
            masters=3,
            replicas=1,
            node_timeout_ms=self.NODE_TIMEOUT_MS,
            host=HOST,
            data_dir=str(self.dir / "cluster"),
        )

    @property
    def redis_url(self) -> str:
        return self.redis_cluster.url

    def _start_redis(self) -> list[str]:
        self.redis_cluster.start()
        # Each replica starts from a different node; any one finds the rest.
        return [self.redis_cluster.url_of(p) for p in self.redis_cluster.ports[:2]]

    def _repair_redis(self) -> None:
        """Every node back up (a killed master comes back as its promoted
        replica's replica), and the cluster whole again."""
        for node in self.redis_cluster.nodes:
            node.resume()
            if node.proc is None or node.proc.poll() is not None:
                node.start()
        self.redis_cluster.wait_healthy(60)

    def _stop_redis(self) -> None:
        self.redis_cluster.stop()

    def _backend_values(self) -> list[str]:
        client = redis.RedisCluster.from_url(self.redis_url, socket_timeout=2)
        try:
            return [_text(v) for v in client.hvals(keys.backends(self.pool))]
        finally:
            client.close()
