"""A real Redis Cluster of three masters on free loopback ports, for the
registry's contract suite: `redis-server --cluster-enabled yes` processes
joined with `redis-cli --cluster create`."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from lookaside.redis_process import find_redis_server, free_port


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    while True:
        port = free_port()
        if port + 10000 <= 65535 and _free(port + 10000):
            return port


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class RedisCluster:
    def __init__(self, masters: int = 3) -> None:
        self.ports = [_cluster_port() for _ in range(masters)]
        self.dir = Path(tempfile.mkdtemp(prefix="lookaside-cluster-"))
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def _cli(self, *args: str) -> str:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed (it comes with redis-server)")
        done = subprocess.run([cli, *args], capture_output=True, text=True, timeout=30, check=False)
        return done.stdout + done.stderr

    def start(self, timeout: float = 20.0) -> RedisCluster:
        server = find_redis_server()
        for port in self.ports:
            self.procs.append(
                subprocess.Popen(
                    [
                        server,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(self.dir / f"nodes-{port}.conf"),
                        "--dir",
                        str(self.dir),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all("PONG" in self._cli("-p", str(p), "ping") for p in self.ports):
                break
            time.sleep(0.05)
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        out = self._cli("--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes")
        while time.monotonic() < deadline:
            if all(
                "cluster_state:ok" in self._cli("-p", str(p), "cluster", "info") for p in self.ports
            ):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Redis Cluster did not form within {timeout}s: {out}")

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
