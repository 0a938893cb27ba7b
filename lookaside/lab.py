"""`lookaside up`: the whole local lab in one command.

It starts a private Redis (append-only persistence, unless --redis-url is
given), the balancer, the DNS responder, the admin API and routeguide
backends as separate processes, and checks each one itself: the process it
started must be alive and hold its port. A backend that dies is reported and
the lab keeps running (--restart-backends starts it again); its Redis is
started again from its append-only file; a balancer, DNS responder or
admin that dies stops the lab with exit status 1. Ctrl-C or SIGTERM stops
everything, backends first so they deregister.

The lab keeps its admin token and (with --tls) its CA in its state folder
(--state-dir; default the folder of the context file, lookaside/lab), so
both outlive a restart; and it writes the context (lookaside.context) that
`ctl`, `watch`, `export` and `apply` use when no flag names a lab. Its pool
gets a short report interval (--report-interval-ms) when the lab creates it,
so that a short demo run shows up in `ctl load` and the dashboard.

With --tls it runs the production profile of docs/security.md: TLS on the
balancer, the admin API, the backends and /metrics with a lab CA, the
balancer's health checks over TLS to the backends, and a registration token
of the pool's own (a registration policy) instead of --insecure-registration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lookaside import context
from lookaside.lab_procs import LabError, Proc, exit_reason, lab_lock, preflight_ports
from lookaside.redis_process import RedisProcess, free_port, redis_unreachable
from server_common.declarative import check_state_file
from server_common.settings import (
    add_settings_arguments,
    check_redis_url,
    settings_or_exit,
)


class LabSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOOKASIDE_LAB_", extra="ignore")

    redis_url: str = Field("", description="use this Redis instead of starting a private one")
    host: str = Field("127.0.0.1", description="address every lab process binds")
    balancer_port: int = Field(50051, ge=1, le=65535, description="balancer port")
    metrics_port: int = Field(9464, ge=1, le=65535, description="balancer /metrics port")
    dns_port: int = Field(8053, ge=1, le=65535, description="DNS responder port (UDP and TCP)")
    dns_metrics_port: int = Field(9465, ge=1, le=65535, description="DNS responder /metrics port")
    admin_port: int = Field(8080, ge=1, le=65535, description="admin API and dashboard port")
    backends: int = Field(3, ge=0, le=20, description="routeguide backends to start")
    pool: str = Field("routeguide", description="pool the backends join")
    zone: str = Field("lookaside.test", description="DNS zone")
    admin_token: str = Field(
        "",
        description="admin API token; generated when empty (as a flag it shows in ps: prefer "
        "the environment)",
        repr=False,
    )
    tls: bool = Field(
        False,
        description="the production profile: TLS on the balancer, admin API and backends "
        "(health checks too; a lab CA), a registration token for the pool",
    )
    balancer_workers: int = Field(
        1,
        ge=1,
        le=16,
        description="balancer worker processes (`lookaside balancer --workers`); the lab's "
        "default 1 keeps one process and one log; production defaults to the cores",
    )
    ready_timeout: float = Field(30.0, description="seconds to wait for each process")
    restart_backends: bool = Field(False, description="start a backend again when it dies")
    state_file: str = Field(
        "", description="declared pools for the balancer and admin (see `lookaside export`)"
    )
    log_dir: str = Field(
        "", description="keep the logs here; default a temporary folder, removed on a clean stop"
    )
    state_dir: str = Field(
        "",
        description="the admin token and the TLS CA, kept across restarts; default lab/ next "
        "to the context file (LOOKASIDE_CONTEXT, ~/.config/lookaside/context.json)",
    )
    report_interval_ms: int = Field(
        1000,
        ge=0,
        le=3_600_000,
        description="how often the lab pool's clients report load, set when the lab creates "
        "the pool (the default for other pools is 10000)",
    )

    @field_validator("admin_token")
    @classmethod
    def _admin_token(cls, v: str) -> str:
        # Checked here, before anything starts, with the admin API's own rule.
        from admin_api.settings import token_problem

        problem = token_problem(v) if v else None
        if problem:
            raise ValueError(f"the admin token {problem}")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        return check_redis_url(v) if v.strip() else ""

    @field_validator("state_file")
    @classmethod
    def _state_file(cls, v: str) -> str:
        return str(Path(check_state_file(v)).resolve()) if v.strip() else ""


PORT_FLAGS = {
    "balancer_port": "balancer",
    "metrics_port": "balancer /metrics",
    "dns_port": "DNS responder",
    "dns_metrics_port": "DNS responder /metrics",
    "admin_port": "admin API",
}


class Lab:
    def __init__(self, settings: LabSettings, out: Callable[[str], None] = print) -> None:
        self.s = settings
        self.out = out
        self.keep_logs = bool(settings.log_dir)
        self.dir = (
            Path(settings.log_dir).resolve()
            if settings.log_dir
            else Path(tempfile.mkdtemp(prefix="lookaside-lab-"))
        )
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        self.redis: RedisProcess | None = None
        self.redis_url = settings.redis_url
        self.procs: list[Proc] = []
        self.backend_ports: list[int] = []
        self.state_dir = Path(settings.state_dir or context.location().parent / "lab").resolve()
        self.token_file = self.state_dir / "admin-token"
        self.token = settings.admin_token or self._kept_token()
        self.certs: Any = None
        self.context_path: Path | None = None

    def _kept_token(self) -> str:
        """The token of an earlier run from the state folder, else a new one."""
        try:
            kept = self.token_file.read_text().strip()
        except OSError:
            kept = ""
        from admin_api.settings import token_problem

        return kept if kept and token_problem(kept) is None else secrets.token_urlsafe(18)

    def _keep_token(self) -> None:
        self.token_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.token + "\n")

    def _proc(self, name: str, args: list[str], port: int = 0, **kw: object) -> Proc:
        proc = Proc(name, args, self.dir / "logs" / f"{name}.log", port=port, **kw)  # type: ignore[arg-type]
        self.procs.append(proc)
        return proc.start()

    def _tls_args(self) -> list[str]:
        """--tls-cert/--tls-key of the lab's certificates (made on first use);
        children also trust the lab CA as their default roots."""
        if not self.s.tls:
            return []
        from lookaside.certs import kept_or_issued

        if self.certs is None:
            self.certs = kept_or_issued(self.state_dir / "certs", zone=self.s.zone)
            os.environ["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = str(self.certs.ca)
        return ["--tls-cert", str(self.certs.server_cert), "--tls-key", str(self.certs.server_key)]

    def _backend_tls_args(self) -> list[str]:
        """The backends serve TLS and register over TLS, trusting the lab CA."""
        args = self._tls_args()
        if self.certs is not None:
            args += ["--balancer-tls-ca", str(self.certs.ca)]
        return args

    def _dns_tls_args(self) -> list[str]:
        """The DNS responder's /metrics over HTTPS (DNS itself has no TLS)."""
        cert_key = self._tls_args()
        if not cert_key:
            return []
        return ["--metrics-tls-cert", cert_key[1], "--metrics-tls-key", cert_key[3]]

    def _registration_token_file(self) -> Path:
        """The pool's registration token (made on first use, mode 0600)."""
        import secrets

        path = self.dir / "secrets" / f"registration-token-{self.s.pool}"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
        return path

    def _balancer_security_args(self) -> list[str]:
        """With --tls, the production profile (docs/security.md): backends
        register with the pool's own token (a registration policy), and
        the health checks dial them over TLS with the lab CA. Without it,
        registrations need no credential (loudly: the balancer warns, and
        its metric says so)."""
        if not self.s.tls:
            return ["--insecure-registration"]
        policy = self.dir / "registration-policy.json"
        rule = {"token_files": [str(self._registration_token_file())], "create": True}
        policy.write_text(json.dumps({"pools": {self.s.pool: rule}}, indent=2) + "\n")
        return [
            *self._tls_args(),
            "--registration-policy", str(policy),
            "--backend-tls-ca", str(self.certs.ca),
        ]  # fmt: skip

    def _backend_registration_args(self) -> list[str]:
        if not self.s.tls:
            return []
        return ["--registration-token-file", str(self._registration_token_file())]

    def start(self) -> None:
        s = self.s
        preflight_ports(s.host, {flag: getattr(s, flag) for flag in PORT_FLAGS}, PORT_FLAGS)
        self._keep_token()
        if self.redis_url:
            problem = redis_unreachable(self.redis_url)
            if problem:
                raise LabError(
                    f"cannot reach Redis at {self.redis_url} ({problem}); "
                    "fix --redis-url (env LOOKASIDE_LAB_REDIS_URL) or leave it empty"
                )
        else:
            self.redis = RedisProcess(
                host=s.host, persist=True, data_dir=str(self.dir / "redis")
            ).start()
            self.redis_url = self.redis.url
        lb_addr = f"{s.host}:{s.balancer_port}"
        url = self.redis_url
        state = ["--state-file", s.state_file] if s.state_file else []
        self._proc(
            "balancer",
            ["balancer", "--listen", lb_addr, "--redis-url", url,
             "--metrics-listen", f"{s.host}:{s.metrics_port}", "--replica-id", "lab-balancer",
             "--workers", str(s.balancer_workers),
             *self._balancer_security_args(), *state],
            s.balancer_port,
        ).wait_ready(s.ready_timeout)  # fmt: skip
        self._proc(
            "dns",
            ["dns", "--listen", f"{s.host}:{s.dns_port}", "--redis-url", url, "--zone", s.zone,
             "--balancers", lb_addr, "--metrics-listen", f"{s.host}:{s.dns_metrics_port}",
             *self._dns_tls_args()],
            s.dns_port,
        ).wait_ready(s.ready_timeout)  # fmt: skip
        self._proc(
            "admin",
            [
                "admin",
                "--listen",
                f"{s.host}:{s.admin_port}",
                "--redis-url",
                url,
                *self._tls_args(),
                *state,
            ],
            s.admin_port,
            env={"LOOKASIDE_ADMIN_TOKEN": self.token},
        ).wait_ready(s.ready_timeout)
        self._short_reports()
        for i in range(s.backends):
            port = free_port(s.host)
            self.backend_ports.append(port)
            self._proc(
                f"routeguide-{i + 1}",
                ["routeguide", "server", "--listen", f"{s.host}:{port}", "--balancer", lb_addr,
                 "--pool", s.pool, "--advertise-host", s.host, *self._backend_tls_args(),
                 *self._backend_registration_args()],
                port,
                backend=True,
            )  # fmt: skip
        for proc in self.procs:
            if proc.backend:
                proc.wait_ready(s.ready_timeout)
        self._wait_registered(s.backends)
        self.context_path = context.save(self.as_context())

    @property
    def admin_url(self) -> str:
        return f"{'https' if self.s.tls else 'http'}://{self.s.host}:{self.s.admin_port}"

    def as_context(self) -> context.Context:
        """Where the client commands find this lab."""
        return context.Context(
            admin_url=self.admin_url,
            token_file=str(self.token_file),
            ca=str(self.certs.ca) if self.certs else "",
            balancer=f"{self.s.host}:{self.s.balancer_port}",
            redis_url=self.redis_url,
            written_by="lookaside up",
        )

    def _short_reports(self) -> None:
        """The lab's pool, when the lab creates it, has clients report every
        --report-interval-ms (a pool a state file declared is left alone)."""
        from lookaside_registry.model import PoolConfig
        from lookaside_registry.store import RegistryStore

        async def create() -> None:
            store = RegistryStore.from_url(self.redis_url)
            try:
                if await store.get_pool(self.s.pool) is None:
                    config = PoolConfig(
                        name=self.s.pool, report_interval_ms=self.s.report_interval_ms
                    )
                    await store.put_pool(config, actor="lookaside up")
            finally:
                await store.close()

        asyncio.run(create())

    def _registered(self) -> int:
        """Backends of the lab's pool in the registry (0 while it is away)."""
        from lookaside_registry.errors import RegistryFailure
        from lookaside_registry.store import RegistryStore

        async def count() -> int:
            store = RegistryStore.from_url(self.redis_url)
            try:
                snapshot = await store.snapshot(self.s.pool)
                return len(snapshot.backends) if snapshot is not None else 0
            except RegistryFailure:
                return 0
            finally:
                await store.close()

        return asyncio.run(count())

    def _wait_registered(self, count: int) -> None:
        deadline = time.monotonic() + self.s.ready_timeout
        while self._registered() < count:
            for proc in self.procs:
                proc.check_alive()
            if time.monotonic() > deadline:
                raise LabError(
                    f"the backends did not register within {self.s.ready_timeout:g}s; "
                    f"see {self.dir}/logs/routeguide-*.log"
                )
            time.sleep(0.1)

    def banner(self) -> str:
        s = self.s
        lb_addr = f"{s.host}:{s.balancer_port}"
        exe = Path(sys.executable).parent / "lookaside"
        cmd = str(exe) if exe.exists() else f"{sys.executable} -m lookaside"
        first = f"{s.host}:{self.backend_ports[0]}" if self.backend_ports else "HOST:PORT"
        target = f"{s.pool}.{s.zone}:{s.balancer_port}"
        pids = ", ".join(f"{p.name} {p.pid}" for p in self.procs)
        redis_pid = f" (pid {self.redis.pid}, append-only)" if self.redis else ""
        logs = "kept" if self.keep_logs else "removed on a clean stop; keep them with --log-dir"
        tls = f" --tls-ca {self.certs.ca}" if self.certs else ""
        # Over xDS the lab's Clusters carry the backends' TLS (its balancer
        # has --backend-tls-ca); --server-name serves the client's fallback
        # credentials, which dial the backends by the pool's name (their
        # certificates name the zone's hosts).
        xds_tls = f"{tls} --server-name {s.pool}.{s.zone}" if self.certs else ""
        # The lab's backends serve TLS from the same CA: the bootstrap
        # defines it for them too (the Clusters ask for it).
        bootstrap_tls = f" --ca {self.certs.ca} --backend-ca {self.certs.ca}" if self.certs else ""
        web = "https" if s.tls else "http"
        lines = [
            "Lookaside lab is up",
            f"  redis      {self.redis_url}{redis_pid}",
            f"  balancer   {lb_addr}   metrics {web}://{s.host}:{s.metrics_port}/metrics"
            + (f"   {s.balancer_workers} workers" if s.balancer_workers > 1 else ""),
            f"  dns        {s.host}:{s.dns_port} (udp+tcp)   zone {s.zone}",
            f"  admin      {self.admin_url}/   token in {self.token_file}",
            f"  dashboard  {self.admin_url}/#token={self.token}   (opens logged in)",
            f"  context    {self.context_path}   (ctl, watch, export and apply use it)",
            f"  backends   {', '.join(f'{s.host}:{p}' for p in self.backend_ports)}   pool {s.pool}",
            f"  pids       {pids}",
            f"  logs       {self.dir}/logs ({logs})",
            *(
                [
                    f"  tls        CA {self.certs.ca} (one credential for balancer and backends)",
                    f"  register   pool {s.pool}: token in {self._registration_token_file()}",
                ]
                if self.certs
                else []
            ),
            "",
            "Try, from another terminal:",
            # URL, token and CA from the context (no token on a command line).
            f"  {cmd} ctl pools",
            f"  {cmd} routeguide client --lb none --server {first} --mode repeatn --api GetFeature -n 15{tls}",
            f"  {cmd} routeguide client --lb lookaside --balancer {lb_addr} --target {target} --mode repeatn --api GetFeature -n 15{tls}",
            f"  {cmd} routeguide client --lb grpclb-dns --dns {s.host}:{s.dns_port} --target {target} --mode repeatn --api GetFeature -n 15{tls}",
            # The same pool from gRPC's own xDS client (the bootstrap is made from --balancer).
            f"  {cmd} routeguide client --lb xds --balancer {lb_addr} --target xds:///{s.pool} --mode repeatn --api GetFeature -n 15{xds_tls}",
            f"  {cmd} xds-bootstrap --server {lb_addr}{bootstrap_tls} > bootstrap.json   # for your own client: GRPC_XDS_BOOTSTRAP=bootstrap.json, target xds:///{s.pool}",
            "",
            "Ctrl-C stops everything.",
        ]
        return "\n".join(lines)

    def watch_once(self) -> str | None:
        """Checks every process once. Reports (and maybe restarts) a dead
        backend; returns why the lab must stop when a service died."""
        for proc in self.procs:
            code = proc.poll_exit()
            if code is None:
                continue
            if not proc.backend:
                return f"{proc.name} (pid {proc.pid}) {exit_reason(code)}"
            alive = sum(1 for p in self.procs if p.backend and p.alive())
            total = sum(1 for p in self.procs if p.backend)
            self.out(
                f"lab: {proc.name} (pid {proc.pid}, {self.s.host}:{proc.port}) {exit_reason(code)}; "
                f"the lab keeps running with {alive} of {total} backends"
                + ("" if self.s.restart_backends else " (--restart-backends starts them again)")
            )
            if self.s.restart_backends:
                proc.schedule_restart()
        for proc in self.procs:
            if proc.restart_due():
                proc.start()
                self.out(
                    f"lab: restarted {proc.name} on {self.s.host}:{proc.port} (pid {proc.pid})"
                )
        if self.redis and self.redis.proc and self.redis.proc.poll() is not None:
            # The lab's own Redis keeps an append-only file: start it again
            # on its port, with its data.
            why = exit_reason(self.redis.proc.returncode)
            old = self.redis.pid
            try:
                self.redis.start()
            except (RuntimeError, TimeoutError, OSError) as exc:
                return f"redis (pid {old}) {why}, and did not start again: {exc}"
            self.out(
                f"lab: redis (pid {old}) {why}; restarted it from its append-only file "
                f"(pid {self.redis.pid})"
            )
        return None

    def stop(self) -> None:
        # Backends first (they deregister), then the services, then Redis.
        backends = [p for p in self.procs if p.backend]
        services = [p for p in reversed(self.procs) if not p.backend]
        for group in (backends, services):
            for proc in group:
                proc.terminate()
            for proc in group:
                proc.wait_stopped(10)
        if self.redis is not None:
            self.redis.stop()

    def remove_logs(self) -> None:
        if not self.keep_logs:
            shutil.rmtree(self.dir, ignore_errors=True)


def run(settings: LabSettings) -> int:
    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        lock = lab_lock(settings.host, settings.balancer_port)
    except LabError as exc:
        print(f"lookaside up: {exc}", file=sys.stderr, flush=True)
        return 1
    lab = Lab(settings, out=lambda line: print(line, flush=True))
    failed = ""
    try:
        lab.start()
        print(lab.banner(), flush=True)
        while not stop["now"] and not failed:
            failed = lab.watch_once() or ""
            time.sleep(0.2)
    except (LabError, OSError) as exc:
        failed = str(exc)
        print(f"lookaside up: the lab failed to start: {exc}", file=sys.stderr, flush=True)
    else:
        if failed:
            print(f"lookaside up: {failed}; stopping the lab", file=sys.stderr, flush=True)
    finally:
        print("stopping the lab ...", flush=True)
        lab.stop()
        lock.release()
    if failed and lab.procs:
        print(f"lab stopped; logs kept in {lab.dir}/logs", flush=True)
        return 1
    lab.remove_logs()
    if failed:
        return 1
    print("lab stopped" + (f"; logs in {lab.dir}/logs" if lab.keep_logs else ""), flush=True)
    return 0


def add_subcommand(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("up", help="start the local lab", description=__doc__.splitlines()[0])
    add_settings_arguments(p, LabSettings)
    p.set_defaults(func=lambda args: run(settings_or_exit(p, LabSettings, args)))
