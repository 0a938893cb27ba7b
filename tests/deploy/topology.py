"""The compose topology as local processes, the way `docker compose up`
runs it: the same commands and environment (service names and ports
remapped to 127.0.0.1 and free ports, Redis the test's own), replicas,
`depends_on` conditions checked with the services' own healthcheck
commands, and restart policies (a process that exits is started again).
Named volumes are folders under the logs' parent, shared by the services
that mount them. Services whose dependencies are met start in a shuffled
order."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lookaside.redis_process import free_port
from tests.deploy.manifest import COMPOSE_FILE, REPO, SECRETS, image_files

HOST_PORT = re.compile(r"\b(?P<host>[A-Za-z0-9_.-]+):(?P<port>\d{2,5})\b")
REDIS_URL = "redis://redis:6379/0"
POLL_S = 0.2
HEALTH_EVERY_S = 0.5
RESTART_DELAY_S = 1.0


def load_services() -> dict[str, dict[str, Any]]:
    """The compose file's services, secrets filled in, anchors merged."""
    text = COMPOSE_FILE.read_text()

    def fill(m: re.Match[str]) -> str:
        return SECRETS[m.group(1)]

    text = re.sub(r"\$\{([A-Z_]+):\?[^}]*\}", fill, text)
    services: dict[str, dict[str, Any]] = yaml.safe_load(text)["services"]
    return services


def named_volumes(services: dict[str, dict[str, Any]], root: Path) -> dict[str, str]:
    """Mount points of named volumes -> a local folder per volume."""
    out = {}
    for svc in services.values():
        for volume in svc.get("volumes") or []:
            source, _, rest = str(volume).partition(":")
            target = rest.split(":")[0]
            if target and not source.startswith((".", "/", "~")):
                out[target] = str(root / "volumes" / source)
    return out


@dataclass
class Instance:
    service: str
    replica: int
    argv: list[str]
    env: dict[str, str]
    health: list[str] | None
    restart: str
    depends_on: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    healthy: bool = False
    completed: bool = False
    restarts: int = 0
    next_check: float = 0.0
    not_before: float = 0.0  # a restart waits this long (compose's restart delay)
    output: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.service}-{self.replica + 1}"


class Topology:
    def __init__(
        self,
        redis_url: str,
        logs: Path,
        seed: int,
        skip: tuple[str, ...] = (),
        *,
        honour_depends_on: bool = True,
    ) -> None:
        """honour_depends_on=False starts everything at once in a shuffled
        order, leaving only restart policies to bring it together (what
        happens when a dependency restarts under a running service)."""
        self.redis_url = redis_url
        self.honour_depends_on = honour_depends_on
        self.services = {k: v for k, v in load_services().items() if k not in skip}
        self.ports: dict[tuple[str, int, int], int] = {}
        self.files = image_files()
        # Redis is the test's own; every other volume is a local folder.
        lookaside_services = {k: v for k, v in self.services.items() if k != "redis"}
        self.files.update(named_volumes(lookaside_services, logs.parent))
        for folder in set(named_volumes(lookaside_services, logs.parent).values()):
            Path(folder).mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(seed)
        self.instances: list[Instance] = []
        self.order: list[str] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        base = {k: v for k, v in os.environ.items() if not k.startswith("LOOKASIDE_")}
        for name, svc in self.services.items():
            if name == "redis":
                continue  # the test's own redis-server
            replicas = int((svc.get("deploy") or {}).get("replicas", 1))
            check = (svc.get("healthcheck") or {}).get("test")
            for r in range(replicas):
                env = {
                    k: self.remap(str(v), name, r)
                    for k, v in (svc.get("environment") or {}).items()
                }
                self.instances.append(
                    Instance(
                        service=name,
                        replica=r,
                        argv=[self.remap(str(a), name, r) for a in svc["command"]],
                        env={**base, **env},
                        health=[self.remap(a, name, r) for a in check[1:]]
                        if check and check[0] == "CMD"
                        else None,
                        restart=svc.get("restart", "no"),
                        depends_on={
                            d: c["condition"] for d, c in (svc.get("depends_on") or {}).items()
                        },
                        log=logs / f"{name}-{r + 1}.log",
                    )
                )

    def port(self, service: str, replica: int, port: int) -> int:
        key = (service, replica, port)
        if key not in self.ports:
            self.ports[key] = free_port()
        return self.ports[key]

    def remap(self, value: str, service: str, replica: int) -> str:
        marker = "\0redis\0"  # the test's Redis URL has a host:port of its own
        value = value.replace(REDIS_URL, marker)

        def sub(m: re.Match[str]) -> str:
            host, port = m.group("host"), int(m.group("port"))
            if host in ("0.0.0.0", "127.0.0.1"):
                return f"127.0.0.1:{self.port(service, replica, port)}"
            if host in self.services:
                return f"127.0.0.1:{self.port(host, 0, port)}"
            return m.group(0)

        value = HOST_PORT.sub(sub, value).replace(marker, self.redis_url)
        for dst, src in self.files.items():
            value = value.replace(dst, src)
        return value

    def address(self, service: str, port: int, replica: int = 0) -> str:
        return f"127.0.0.1:{self.port(service, replica, port)}"

    # -- running ----------------------------------------------------------

    def _spawn(self, inst: Instance) -> None:
        inst.log.parent.mkdir(parents=True, exist_ok=True)
        out = inst.log.open("ab")
        inst.proc = subprocess.Popen(
            [sys.executable, "-m", "lookaside", *inst.argv],
            cwd=REPO,
            env=inst.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        self.order.append(inst.name)

    def _ready(self, dep: str, condition: str) -> bool:
        if dep == "redis":
            return True
        group = [i for i in self.instances if i.service == dep]
        if condition == "service_completed_successfully":
            return all(i.completed for i in group)
        if condition == "service_healthy":
            return all(i.healthy for i in group)
        return all(i.proc is not None for i in group)

    def _check(self, inst: Instance, now: float) -> None:
        if inst.health is None or inst.healthy or now < inst.next_check:
            return
        inst.next_check = now + HEALTH_EVERY_S
        done = subprocess.run(
            [sys.executable, "-m", "lookaside", *inst.health[1:]],
            cwd=REPO,
            env=inst.env,
            capture_output=True,
            timeout=30,
        )
        inst.healthy = done.returncode == 0

    def step(self) -> None:
        now = time.monotonic()
        pending = [
            i for i in self.instances if i.proc is None and not i.completed and now >= i.not_before
        ]
        self.rng.shuffle(pending)
        for inst in pending:
            if not self.honour_depends_on or all(
                self._ready(d, c) for d, c in inst.depends_on.items()
            ):
                self._spawn(inst)
        for inst in self.instances:
            if inst.proc is None:
                continue
            code = inst.proc.poll()
            if code is None:
                self._check(inst, now)
                continue
            inst.healthy = False
            if code == 0 and inst.restart in ("no", "on-failure"):
                inst.completed, inst.proc = True, None
            elif inst.restart in ("always", "unless-stopped", "on-failure"):
                inst.restarts += 1
                inst.proc = None
                inst.not_before = now + RESTART_DELAY_S
            else:
                inst.completed, inst.proc = code == 0, None

    def run(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                self.step()
            self.stopping.wait(POLL_S)

    def start(self) -> Topology:
        threading.Thread(target=self.run, name="topology", daemon=True).start()
        return self

    def stop_service(self, service: str, timeout: float = 15.0) -> list[str]:
        """SIGTERM to a service's processes (no restart); their output."""
        with self.lock:
            group = [i for i in self.instances if i.service == service]
            for inst in group:
                inst.restart = "no"
                if inst.proc is not None and inst.proc.poll() is None:
                    inst.proc.send_signal(signal.SIGTERM)
        outputs = []
        for inst in group:
            if inst.proc is not None:
                try:
                    inst.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    inst.proc.kill()
                    inst.proc.wait()
            outputs.append(inst.log.read_text(errors="replace") if inst.log.exists() else "")
        return outputs

    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            for inst in reversed(self.instances):
                if inst.proc is not None and inst.proc.poll() is None:
                    inst.proc.send_signal(signal.SIGTERM)
            for inst in self.instances:
                if inst.proc is not None:
                    try:
                        inst.proc.wait(10)
                    except subprocess.TimeoutExpired:
                        inst.proc.kill()
                        inst.proc.wait()

    def describe(self) -> str:
        lines = [f"start order: {', '.join(self.order)}"]
        for inst in self.instances:
            tail = inst.log.read_text(errors="replace")[-600:] if inst.log.exists() else ""
            lines.append(f"--- {inst.name} healthy={inst.healthy} restarts={inst.restarts}\n{tail}")
        return "\n".join(lines)
