"""`lookaside up`: the whole local lab in one command.

It starts a private Redis (unless --redis-url is given), the balancer, the
DNS responder, the admin API and routeguide backends as separate processes,
prints what runs where and what to try, and on Ctrl-C or SIGTERM stops
everything (backends first, so they deregister), leaving nothing behind.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lookaside.redis_process import RedisProcess, free_port
from lookaside.settings import add_settings_arguments, settings_or_exit


class LabSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOOKASIDE_LAB_", extra="ignore")

    redis_url: str = Field("", description="use this Redis instead of starting a private one")
    host: str = Field("127.0.0.1", description="address every lab process binds")
    balancer_port: int = Field(50051, description="balancer port")
    metrics_port: int = Field(9464, description="balancer /metrics port")
    dns_port: int = Field(8053, description="DNS responder port (UDP and TCP)")
    dns_metrics_port: int = Field(9465, description="DNS responder /metrics port")
    admin_port: int = Field(8080, description="admin API and dashboard port")
    backends: int = Field(3, ge=0, le=20, description="routeguide backends to start")
    pool: str = Field("routeguide", description="pool the backends join")
    zone: str = Field("lookaside.test", description="DNS zone")
    admin_token: str = Field("", description="admin API token; generated when empty")
    ready_timeout: float = Field(30.0, description="seconds to wait for each process")

    @field_validator("admin_token")
    @classmethod
    def _admin_token(cls, v: str) -> str:
        # Checked here, before anything starts, with the admin API's own rule.
        from admin_api.settings import token_problem

        problem = token_problem(v) if v else None
        if problem:
            raise ValueError(f"the admin token {problem}")
        return v


class Lab:
    def __init__(self, settings: LabSettings, out: Callable[[str], None] = print) -> None:
        self.s = settings
        self.out = out
        self.dir = Path(tempfile.mkdtemp(prefix="lookaside-lab-"))
        (self.dir / "logs").mkdir()
        self.redis: RedisProcess | None = None
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.backend_ports: list[int] = []
        self.token = settings.admin_token or secrets.token_urlsafe(18)

    def _spawn(
        self, name: str, args: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.dir / "logs" / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "lookaside", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.procs.append((name, proc))
        return proc

    def _wait_port(self, name: str, port: int, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.s.ready_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode}; see {self.dir}/logs/{name}.log"
                )
            try:
                with socket.create_connection((self.s.host, port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(
            f"{name} did not listen on {self.s.host}:{port}; see {self.dir}/logs/{name}.log"
        )

    def _wait_registered(self, redis_url: str, count: int) -> None:
        import redis

        from lookaside.registry import keys

        client = redis.Redis.from_url(redis_url)
        try:
            deadline = time.monotonic() + self.s.ready_timeout
            while client.hlen(keys.backends(self.s.pool)) < count:
                for name, proc in self.procs:
                    if proc.poll() is not None:
                        raise RuntimeError(
                            f"{name} exited with {proc.returncode}; see {self.dir}/logs/{name}.log"
                        )
                if time.monotonic() > deadline:
                    raise TimeoutError(f"backends did not register; see {self.dir}/logs/")
                time.sleep(0.05)
        finally:
            client.close()

    def start(self) -> None:
        s = self.s
        redis_url = s.redis_url
        if not redis_url:
            self.redis = RedisProcess(host=s.host).start()
            redis_url = self.redis.url
        self.redis_url = redis_url
        lb_addr = f"{s.host}:{s.balancer_port}"
        balancer = self._spawn(
            "balancer",
            [
                "balancer",
                "--listen",
                lb_addr,
                "--redis-url",
                redis_url,
                "--metrics-listen",
                f"{s.host}:{s.metrics_port}",
                "--replica-id",
                "lab-balancer",
            ],
        )
        self._wait_port("balancer", s.balancer_port, balancer)
        dns = self._spawn(
            "dns",
            [
                "dns",
                "--listen",
                f"{s.host}:{s.dns_port}",
                "--redis-url",
                redis_url,
                "--zone",
                s.zone,
                "--balancers",
                lb_addr,
            ],
        )
        self._wait_port("dns", s.dns_port, dns)
        admin = self._spawn(
            "admin",
            ["admin", "--listen", f"{s.host}:{s.admin_port}", "--redis-url", redis_url],
            env={"LOOKASIDE_ADMIN_TOKEN": self.token},
        )
        self._wait_port("admin", s.admin_port, admin)
        for i in range(s.backends):
            port = free_port(s.host)
            self.backend_ports.append(port)
            self._spawn(
                f"routeguide-{i + 1}",
                [
                    "routeguide",
                    "server",
                    "--listen",
                    f"{s.host}:{port}",
                    "--balancer",
                    lb_addr,
                    "--pool",
                    s.pool,
                    "--advertise-host",
                    s.host,
                ],
            )
        self._wait_registered(redis_url, s.backends)

    def banner(self) -> str:
        s = self.s
        lb_addr = f"{s.host}:{s.balancer_port}"
        exe = Path(sys.executable).parent / "lookaside"
        cmd = str(exe) if exe.exists() else f"{sys.executable} -m lookaside"
        first = f"{s.host}:{self.backend_ports[0]}" if self.backend_ports else "HOST:PORT"
        target = f"{s.pool}.{s.zone}:{s.balancer_port}"
        lines = [
            "Lookaside lab is up",
            f"  redis      {self.redis_url}",
            f"  balancer   {lb_addr}   metrics http://{s.host}:{s.metrics_port}/metrics",
            f"  dns        {s.host}:{s.dns_port} (udp+tcp)   zone {s.zone}",
            f"  admin      http://{s.host}:{s.admin_port}/   token {self.token}",
            f"  backends   {', '.join(f'{s.host}:{p}' for p in self.backend_ports)}   pool {s.pool}",
            f"  logs       {self.dir}/logs",
            "",
            "Try, from another terminal:",
            f"  {cmd} routeguide client --lb none --server {first} --mode repeatn --api GetFeature -n 15",
            f"  {cmd} routeguide client --lb lookaside --balancer {lb_addr} --target {target} --mode repeatn --api GetFeature -n 15",
            f"  {cmd} routeguide client --lb grpclb-dns --dns {s.host}:{s.dns_port} --target {target} --mode repeatn --api GetFeature -n 15",
            "",
            "Ctrl-C stops everything.",
        ]
        return "\n".join(lines)

    def stop(self) -> None:
        # Backends first (they deregister), then the services, then Redis.
        backends = [p for n, p in self.procs if n.startswith("routeguide")]
        services = [p for n, p in reversed(self.procs) if not n.startswith("routeguide")]
        for group in (backends, services):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in group:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.redis is not None:
            self.redis.stop()


def run(settings: LabSettings) -> int:
    lab = Lab(settings)
    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        lab.start()
        print(lab.banner(), flush=True)
        while not stop["now"]:
            for name, proc in lab.procs:
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping the lab", flush=True)
                    stop["now"] = True
            time.sleep(0.2)
        return 0
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"lab failed to start: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        print("stopping the lab ...", flush=True)
        lab.stop()
        print("lab stopped", flush=True)


def add_subcommand(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("up", help="start the local lab", description=__doc__.splitlines()[0])
    add_settings_arguments(p, LabSettings)
    p.set_defaults(func=lambda args: run(settings_or_exit(p, LabSettings, args)))
