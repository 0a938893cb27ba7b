"""The chaos suite's lab, as local processes on loopback: Redis (append-only),
two balancer replicas (the first reaches Redis through a TcpProxy the suite
controls), the DNS responder advertising both, routeguide backends that
register with both, and load clients of every kind."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import redis

from lookaside.chaos.proxy import TcpProxy
from lookaside.lab_procs import LabError, Proc
from lookaside.redis_process import RedisProcess, free_port
from lookaside.registry import keys
from lookaside.registry.model import PoolConfig
from lookaside.registry.store import RegistryStore

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
    ) -> None:
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="lookaside-chaos-"))
        self._owns_dir = not workdir
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        self.pool = pool
        self.n_backends = backends
        self.client_kinds = clients
        self.rate = rate
        self.call_timeout = call_timeout
        self.state_file = state_file
        # Registration needs a credential: one token for the lab's replicas
        # and backends, passed in the environment (not in `ps`).
        self.registration_token = __import__("secrets").token_urlsafe(24)
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

    def balancer(self, i: int, redis_url: str) -> Proc:
        port = free_port(HOST)
        args = ["balancer", "--listen", f"{HOST}:{port}", "--redis-url", redis_url,
                "--metrics-listen", "", "--replica-id", f"chaos-{i + 1}", "--log-level", "warning"]  # fmt: skip
        if self.state_file:
            args += ["--state-file", self.state_file]
        env = {"LOOKASIDE_BALANCER_REGISTRATION_TOKEN": self.registration_token}
        return self._proc(f"balancer-{i + 1}", args, port, env=env)

    def backend(self, name: str, *flags: str) -> Proc:
        port = free_port(HOST)
        return self._proc(
            name,
            ["routeguide", "server", "--listen", f"{HOST}:{port}", "--balancer",
             self.balancer_addrs, "--pool", self.pool, "--log-level", "warning", *flags],
            port,
            backend=True,
            env={"LOOKASIDE_ROUTEGUIDE_REGISTRATION_TOKEN": self.registration_token},
        )  # fmt: skip

    def _write_state_file(self) -> None:
        """The pool's settings as a state file for both replicas, so that a
        Redis that comes back empty gets them back (lookaside.state_keeper)."""
        from admin_api.schemas.pools import PoolSettings
        from lookaside import declarative as d

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
        self.redis.start()
        self.proxy = TcpProxy(self.redis.port, HOST).start()
        asyncio.run(self._put_pool())
        via_proxy = f"redis://{HOST}:{self.proxy.port}/0"
        self.balancers = [self.balancer(0, via_proxy), self.balancer(1, self.redis.url)]
        for b in self.balancers:
            b.start()
        dns_port = free_port(HOST)
        self.dns = self._proc(
            "dns",
            ["dns", "--listen", f"{HOST}:{dns_port}", "--redis-url", self.redis.url, "--zone",
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
        store = RegistryStore.from_url(self.redis.url)
        await store.put_pool(chaos_pool(self.pool))
        await store.close()

    def _start_client(self, kind: str) -> Proc:
        out = self.dir / f"calls-{kind}.txt"
        target = f"{self.pool}.{ZONE}:{self.balancers[0].port}"
        assert self.dns is not None
        args = ["--kind", kind, "--out", str(out), "--pool", self.pool,
                "--balancers", self.balancer_addrs, "--dns", f"{HOST}:{self.dns.port}",
                "--target", target, "--rate", str(self.rate),
                "--timeout", str(self.call_timeout)]  # fmt: skip
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
        client = redis.Redis.from_url(self.redis.url, socket_timeout=2)
        try:
            values = client.hvals(keys.backends(self.pool))
        except redis.RedisError:
            return -1
        finally:
            client.close()
        return sum(1 for v in values if b'"state":"serving"' in v)

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
        self.redis.resume()
        if self.redis.proc is None or self.redis.proc.poll() is not None:
            self.redis.start()
        if self.proxy:
            self.proxy.heal()
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
        self.redis.stop()

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
