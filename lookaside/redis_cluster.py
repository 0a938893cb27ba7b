"""A real Redis Cluster of local processes on free loopback ports, for the
tests and the chaos suite: `redis-server --cluster-enabled yes` nodes
(each a RedisProcess in its own folder) joined with `redis-cli --cluster
create`, optionally with replicas, and what a failover scenario needs:
which master holds a key's slot, killing a node, and waiting for its
replica to take over."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lookaside.redis_process import RedisProcess, free_port


def _cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    while True:
        port = free_port()
        if port not in taken and port + 10000 <= 65535 and _free(port + 10000):
            return port


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class ClusterNode:
    """One line of CLUSTER NODES."""

    id: str
    port: int
    flags: frozenset[str]
    master_id: str  # "-" for a master
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "noaddr"})

    def holds(self, slot: int) -> bool:
        return any(lo <= slot <= hi for lo, hi in self.slots)


def parse_nodes(text: str) -> list[ClusterNode]:
    nodes = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        address = parts[1].split("@", 1)[0]
        slots = []
        for part in parts[8:]:
            if part.startswith("["):  # a slot being migrated
                continue
            lo, _, hi = part.partition("-")
            slots.append((int(lo), int(hi or lo)))
        nodes.append(
            ClusterNode(
                id=parts[0],
                port=int(address.rpartition(":")[2] or 0),
                flags=frozenset(parts[2].split(",")),
                master_id=parts[3],
                slots=tuple(slots),
            )
        )
    return nodes


class RedisClusterProcesses:
    """`masters` masters, each with `replicas` replicas. A small
    `node_timeout_ms` makes a replica take over soon after its master
    dies (about twice the timeout, plus the election)."""

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 0,
        *,
        node_timeout_ms: int = 15000,
        host: str = "127.0.0.1",
        data_dir: str = "",
    ) -> None:
        self.host = host
        self.replicas = replicas
        self._owns_dir = not data_dir
        self.dir = Path(data_dir or tempfile.mkdtemp(prefix="lookaside-cluster-"))
        taken: set[int] = set()
        self.nodes: list[RedisProcess] = []
        for _ in range(masters * (1 + replicas)):
            port = _cluster_port(taken)
            taken.add(port)
            node_dir = self.dir / f"node-{port}"
            self.nodes.append(
                RedisProcess(
                    port,
                    host,
                    data_dir=str(node_dir),
                    extra_args=(
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node_dir / "nodes.conf"),
                        "--cluster-node-timeout",
                        str(node_timeout_ms),
                    ),
                )  # fmt: skip
            )

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def url(self) -> str:
        """A URL of one node (a cluster client finds the others)."""
        return self.url_of(self.nodes[0].port)

    def url_of(self, port: int) -> str:
        return f"redis://{self.host}:{port}/0"

    def node(self, port: int) -> RedisProcess:
        return next(n for n in self.nodes if n.port == port)

    def live(self) -> list[RedisProcess]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def cli(self, *args: str) -> str:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed (it comes with redis-server)")
        done = subprocess.run([cli, *args], capture_output=True, text=True, timeout=30, check=False)
        return done.stdout + done.stderr

    def on(self, port: int, *args: str) -> str:
        return self.cli("-h", self.host, "-p", str(port), *args)

    def start(self, timeout: float = 30.0) -> RedisClusterProcesses:
        for node in self.nodes:
            Path(node.dir).mkdir(parents=True, exist_ok=True)
            node.start()
        addresses = [f"{self.host}:{p}" for p in self.ports]
        out = self.cli(
            "--cluster", "create", *addresses,
            "--cluster-replicas", str(self.replicas), "--cluster-yes",
        )  # fmt: skip
        try:
            self.wait_healthy(timeout)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}: {out}") from None
        return self

    def cluster_nodes(self) -> list[ClusterNode]:
        """CLUSTER NODES as a live node sees it."""
        for node in self.live():
            text = self.on(node.port, "cluster", "nodes")
            nodes = parse_nodes(text)
            if nodes:
                return nodes
        return []

    def healthy(self) -> bool:
        """Every live node says cluster_state:ok and every slot has a live
        master; with replicas, every master has a live replica in sync
        with it (replication link up)."""
        live = self.live()
        if not live or not all(
            "cluster_state:ok" in self.on(n.port, "cluster", "info") for n in live
        ):
            return False
        nodes = self.cluster_nodes()
        masters = [n for n in nodes if n.is_master and not n.failed and n.slots]
        covered = sum(hi - lo + 1 for m in masters for lo, hi in m.slots)
        if covered != 16384:
            return False
        if self.replicas:
            for m in masters:
                if not any(
                    n.master_id == m.id and not n.failed and "slave" in n.flags for n in nodes
                ):
                    return False
            # A replica that has not synced with its master yet cannot take
            # over from it.
            for n in nodes:
                if "slave" in n.flags and not n.failed:
                    info = self.on(n.port, "info", "replication")
                    if "master_link_status:up" not in info:
                        return False
        return len([n for n in nodes if not n.failed]) == len(live)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                raise RuntimeError(f"Redis Cluster did not form within {timeout:g}s")
            time.sleep(0.1)

    def keyslot(self, key: str) -> int:
        return int(self.on(self.live()[0].port, "cluster", "keyslot", key).strip())

    def master_of(self, slot: int) -> ClusterNode:
        for n in self.cluster_nodes():
            if n.is_master and not n.failed and n.holds(slot):
                return n
        raise RuntimeError(f"no live master holds slot {slot}")

    def wait_master_changed(self, slot: int, old_port: int, timeout: float = 30.0) -> ClusterNode:
        """Until a live master other than the one on `old_port` holds `slot`
        and the cluster says ok again: the replica's promotion."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                master = self.master_of(slot)
                live = self.live()
                if master.port != old_port and all(
                    "cluster_state:ok" in self.on(n.port, "cluster", "info") for n in live
                ):
                    return master
            except RuntimeError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"slot {slot} was not taken over within {timeout:g}s")
            time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisClusterProcesses:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
