"""The processes of a local lab: start, readiness of the process itself
(alive, and holding its own port), restart, stop; the ports it needs, and a
lock so that two labs never share a balancer port."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import psutil


class LabError(Exception):
    """A lab cannot start or keep running; the message says what to do."""


def exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _listens(pid: int, port: int) -> bool:
    """True when process `pid`, or one of its children (the workers of a
    `lookaside balancer --workers N`), holds a listening TCP or a bound UDP
    socket on `port`."""
    try:
        process = psutil.Process(pid)
        conns = process.net_connections(kind="inet")
        for child in process.children():
            try:
                conns += child.net_connections(kind="inet")
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return any(
        c.laddr
        and c.laddr.port == port
        and (c.status == psutil.CONN_LISTEN or c.type == socket.SOCK_DGRAM)
        for c in conns
    )


def port_holder(port: int) -> str:
    """Who holds `port`, as "pid N (command)", when this user may know."""
    try:
        for c in psutil.net_connections(kind="inet"):
            if c.laddr and c.laddr.port == port and c.pid and c.status == psutil.CONN_LISTEN:
                cmd = " ".join(psutil.Process(c.pid).cmdline()[:4])
                return f"pid {c.pid} ({cmd})"
    except (psutil.Error, OSError):
        pass
    return ""


def preflight_ports(host: str, ports: dict[str, int], names: dict[str, str]) -> None:
    """Raises LabError naming the flag to change for the first port that
    is taken (TCP, and UDP for the DNS port)."""
    for flag, port in ports.items():
        kinds = [socket.SOCK_STREAM] + ([socket.SOCK_DGRAM] if flag == "dns_port" else [])
        for kind in kinds:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as s:
                if kind == socket.SOCK_STREAM:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((host, port))
                except OSError as exc:
                    holder = port_holder(port)
                    by = f" by {holder}" if holder else ""
                    option = "--" + flag.replace("_", "-")
                    raise LabError(
                        f"port {port} for the {names[flag]} is taken{by} ({exc.strerror}); "
                        f"stop that program or choose another port with {option} "
                        f"(env LOOKASIDE_LAB_{flag.upper()})"
                    ) from None


class LabLock:
    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self.handle = handle

    def release(self) -> None:
        self.path.unlink(missing_ok=True)
        self.handle.close()


def lab_lock(host: str, balancer_port: int) -> LabLock:
    """An exclusive lock for a lab on host:balancer_port, holding our pid;
    LabError naming the other lab's pid when one runs already."""
    path = Path(tempfile.gettempdir()) / f"lookaside-lab-{host}-{balancer_port}.pid"
    handle = open(path, "a+")  # noqa: SIM115 - held for the lab's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        other = handle.read().strip() or "?"
        handle.close()
        raise LabError(
            f"another lab (pid {other}) is running with balancer port {balancer_port}; "
            f"stop it first (kill {other}), or start this one with other ports "
            "(--balancer-port, --metrics-port, --dns-port, --dns-metrics-port, --admin-port)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return LabLock(path, handle)


class Proc:
    """One `python -m lookaside ...` child in its own session (so Ctrl-C in
    the terminal reaches only the lab, which stops the children in order)."""

    def __init__(
        self,
        name: str,
        args: list[str],
        log: Path,
        *,
        port: int = 0,
        env: dict[str, str] | None = None,
        backend: bool = False,
        module: str = "lookaside",
    ) -> None:
        self.name = name
        self.module = module
        self.args = args
        self.log = log
        self.port = port
        self.env = env or {}
        self.backend = backend
        self.popen: subprocess.Popen[bytes] | None = None
        self.reported = False
        self.restart_at = 0.0
        self.restarts = 0

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen else 0

    def start(self) -> Proc:
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        self.reported = False
        self.restart_at = 0.0
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def _last_line(self) -> str:
        try:
            lines = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return f": {lines[-1].strip()}" if lines else ""

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise LabError(
                f"{self.name} {exit_reason(self.popen.returncode)}{self._last_line()} "
                f"(log {self.log})"
            )

    def wait_ready(self, timeout: float) -> None:
        """Until this very process holds its port (not merely: something
        answers on it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if _listens(self.pid, self.port):
                return
            time.sleep(0.05)
        raise LabError(
            f"{self.name} (pid {self.pid}) did not listen on port {self.port} within "
            f"{timeout:g}s (log {self.log})"
        )

    def poll_exit(self) -> int | None:
        """The exit status, once, the first time the process is seen dead."""
        if self.popen is None or self.reported or self.popen.poll() is None:
            return None
        self.reported = True
        return self.popen.returncode

    def schedule_restart(self) -> None:
        # 1 s, then doubling up to 30 s for a process that keeps dying.
        self.restart_at = time.monotonic() + min(30.0, 2.0**self.restarts)
        self.restarts += 1

    def restart_due(self) -> bool:
        return bool(self.restart_at) and time.monotonic() >= self.restart_at

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(sig)

    def terminate(self) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGCONT)  # a SIGSTOPped child must see SIGTERM
            self.popen.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float) -> None:
        if self.popen is None:
            return
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
