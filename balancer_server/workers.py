"""`lookaside balancer --workers N`: N balancer processes on one port.

One balancer process is one asyncio event loop on one core. With
`--workers N` (N > 1) the command becomes a supervisor that serves nothing
itself: it checks that the port is free (or, for port 0, picks a free one
so that every worker shares it), then starts N worker processes, each a
whole balancer (`BalancerServer`) listening on that port with SO_REUSEPORT,
so the kernel spreads incoming connections over them. Each worker is a
replica of its own (`<replica-id>-w<i>`), so health probing and outlier
judging stay divided by rendezvous hashing over the live replicas
(balancer_server.replicas), workers included, and every worker writes its
own load reports and stream counts.

The supervisor

- restarts a worker that dies, after a backoff (0.5 s, doubling for each
  death within RESTART_RESET seconds of its start, at most MAX_BACKOFF),
  and logs it; a worker that dies before it ever served during the first
  start stops the whole command (exit status 1: its message is above);
- on SIGTERM or SIGINT, sends SIGTERM to every worker, each of which drains
  as a single balancer does (`--grace`), waits for them up to the grace
  period plus STOP_MARGIN seconds (their last report flush), and kills
  what is left; the exit status is 0 only when every worker stopped on
  its own with status 0;
- serves `--metrics-listen` itself: each worker's metrics (read from it
  over a private Unix socket) with a label worker="<i>", and its own,
  lookaside_balancer_workers and lookaside_balancer_worker_restarts_total.

A worker stops too when its supervisor goes away (its stdin, a pipe from
the supervisor, reaches end of file), so a killed supervisor leaves no
worker holding the port. Workers get their settings over that pipe (so
secrets stay out of the command line and the environment); `--state-file`
is kept by worker 0 alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from balancer_server import metrics
from balancer_server.auth import PolicyError
from balancer_server.server import (
    GC_THRESHOLDS,
    SERVER_STOP_SLACK,
    BalancerServer,
    registration_auth,
    serve,
)
from balancer_server.settings import BalancerSettings
from balancer_server.tls import BackendTls, TlsConfigError, server_credentials
from lookaside_registry.asyncutil import stop_requested
from server_common.metrics_http import serve_metrics
from server_common.settings import split_host_port
from server_common.state_keeper import keeper_from_file

log = logging.getLogger("lookaside.balancer")

FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
# A worker that lived this long before dying is restarted after FIRST_BACKOFF.
RESTART_RESET = 30.0
# Beyond --grace, what workers get to finish their shutdown before they are
# killed: their gRPC server's own stop bound past the grace (ending tens of
# thousands of streams just dropped takes seconds), then the last report
# flush and leaving the replica set.
STOP_MARGIN = SERVER_STOP_SLACK + 3.0
# How long the supervisor's /metrics waits for one worker's metrics.
SCRAPE_TIMEOUT = 2.0


async def run(settings: BalancerSettings) -> None:
    """`lookaside balancer`: one process for --workers 1, else a supervisor."""
    if settings.workers == 1:
        await serve(settings)
        return
    status = await Supervisor(settings).run()
    if status:
        raise SystemExit(status)


# --- the supervisor ---------------------------------------------------------


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def resolve_listen(listen: str) -> str:
    """host:port with the port every worker will share: a free one for port
    0; OSError (the message a single balancer gives) when the port is taken
    or the host is not local. Binds only for the check, without
    SO_REUSEPORT, so that a port that another balancer (or its workers)
    listens on is refused, as it is for a single process."""
    host, port = split_host_port(listen, "listen")
    bare = host.strip("[]")
    problem = OSError(f"cannot listen on {listen}: the address is in use or not local")
    try:
        infos = socket.getaddrinfo(
            bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )  # fmt: skip
    except socket.gaierror:
        raise problem from None
    chosen = port
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            # As gRPC's own listener does: connections in TIME_WAIT do not
            # make the port taken, a listener does.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address[0], chosen, *address[2:]))
            except OSError:
                raise problem from None
            chosen = probe.getsockname()[1]
    return _join(bare, chosen)


def preflight(settings: BalancerSettings) -> None:
    """What a worker would refuse at its start, refused once, here: a bad
    registration policy or token file, TLS files that do not go together."""
    try:
        registration_auth(settings, announce=False)
        server_credentials(
            settings.tls_cert, settings.tls_key, settings.tls_client_ca,
            settings.require_client_cert,
        )  # fmt: skip
        BackendTls.from_files(
            settings.backend_tls_ca, settings.backend_tls_cert, settings.backend_tls_key,
            settings.backend_tls_server_name,
        )  # fmt: skip
    except (PolicyError, TlsConfigError) as exc:
        raise SystemExit(f"lookaside balancer: {exc}") from None


def exit_reason(code: int | None) -> str:
    if code is None:
        return "is running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class _Slot:
    """One worker's place: the process now in it and its history."""

    def __init__(self, index: int, replica_id: str, socket_path: str) -> None:
        self.index = index
        self.replica_id = replica_id
        self.socket_path = socket_path
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self.served = False  # some process in this slot has been ready
        self.started = 0.0
        self.quick_deaths = 0


class WorkerMetrics:
    """A collector: every worker's metrics, read from its Unix socket at
    each scrape, each sample labelled worker="<i>". A worker that does not
    answer (restarting) is left out of that scrape."""

    def __init__(self, slots: list[_Slot]) -> None:
        self.slots = slots

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for slot in self.slots:
            text = _read_socket(slot.socket_path)
            if text is None:
                continue
            for family in text_string_to_metric_families(text):
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                for s in family.samples:
                    labels = {**s.labels, "worker": str(slot.index)}
                    into.samples.append(Sample(s.name, labels, s.value, s.timestamp, s.exemplar))
        yield from merged.values()


def _read_socket(path: str) -> str | None:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(SCRAPE_TIMEOUT)
            s.connect(path)
            chunks = []
            while chunk := s.recv(1 << 16):
                chunks.append(chunk)
    except OSError:
        return None
    return b"".join(chunks).decode()


class Supervisor:
    def __init__(self, settings: BalancerSettings) -> None:
        self.settings = settings
        base = settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"
        self.base_replica = base
        self.dir = ""
        self.listen = ""
        self.slots: list[_Slot] = []
        self.stop = asyncio.Event()
        self.stopping = False
        self.fatal = ""
        self.registry = CollectorRegistry()
        self.alive = Gauge(
            "lookaside_balancer_workers",
            "Balancer worker processes serving",
            registry=self.registry,
        )
        self.restarts = Counter(
            "lookaside_balancer_worker_restarts",
            "Balancer worker processes started again after one died",
            registry=self.registry,
        )
        self.registry.register(WorkerMetrics(self.slots))  # type: ignore[arg-type]

    async def run(self) -> int:
        """Serves until SIGTERM/SIGINT; the exit status (0: all stopped cleanly)."""
        settings = self.settings
        self.stop = stop_requested()
        self.listen = resolve_listen(settings.listen)
        preflight(settings)
        serve_metrics(settings.metrics_listen, self.registry, settings.tls_cert, settings.tls_key)
        self.dir = tempfile.mkdtemp(prefix="lookaside-balancer-")  # mode 0700
        try:
            self.slots.extend(
                _Slot(i, f"{self.base_replica}-w{i}", os.path.join(self.dir, f"w{i}.sock"))
                for i in range(settings.workers)
            )
            watchers = [asyncio.create_task(self._watch(s)) for s in self.slots]
            await self._started()
            await self.stop.wait()
            status = await self._stop_all()
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            return status
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    async def _started(self) -> None:
        async def all_ready() -> None:
            for slot in self.slots:
                await slot.ready.wait()

        everyone = asyncio.ensure_future(all_ready())
        stopped = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait([everyone, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if everyone.done():
            log.info(
                "balancer listening on %s with %d workers (supervisor pid %d, replicas %s-w0..%d)",
                self.listen, len(self.slots), os.getpid(), self.base_replica, len(self.slots) - 1,
            )  # fmt: skip
        else:
            everyone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await everyone

    def _spec(self, slot: _Slot) -> dict[str, Any]:
        settings = self.settings.model_dump(mode="json")
        settings.update(listen=self.listen, replica_id=slot.replica_id, metrics_listen="")
        return {
            "index": slot.index,
            "settings": settings,
            "metrics_socket": slot.socket_path,
            "keeper": slot.index == 0,
        }

    async def _spawn(self, slot: _Slot) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "balancer_server.workers", "--index", str(slot.index),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(self._spec(slot)).encode() + b"\n")
        # stdin stays open: its end of file tells the worker that its
        # supervisor is gone.
        slot.proc = proc
        slot.started = time.monotonic()
        return proc

    def _count(self) -> None:
        self.alive.set(sum(1 for s in self.slots if s.ready.is_set()))

    async def _watch(self, slot: _Slot) -> None:
        """Keeps a worker in `slot` until the supervisor stops."""
        while not self.stopping:
            try:
                proc = await self._spawn(slot)
            except OSError as exc:  # no process could be started (fds, memory)
                log.error("cannot start worker %d (%s); trying again in %.0fs", slot.index, exc,
                          MAX_BACKOFF)  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), MAX_BACKOFF)
                continue
            if self.stopping:
                proc.send_signal(signal.SIGTERM)
            assert proc.stdout is not None
            while line := await proc.stdout.readline():
                if line.strip() == b"ready":
                    slot.served = True
                    slot.ready.set()
                    self._count()
                else:
                    sys.stdout.buffer.write(line)
                    sys.stdout.flush()
            code = await proc.wait()
            slot.ready.clear()
            self._count()
            if self.stopping:
                return
            if not slot.served:
                self.fatal = f"worker {slot.index} {exit_reason(code)} before it served"
                log.error("%s; stopping", self.fatal)
                self.stop.set()
                return
            lived = time.monotonic() - slot.started
            slot.quick_deaths = 0 if lived >= RESTART_RESET else slot.quick_deaths + 1
            delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** max(0, slot.quick_deaths - 1))
            log.warning(
                "worker %d (pid %d, replica %s) %s after %.1fs; starting it again in %.1fs",
                slot.index, proc.pid, slot.replica_id, exit_reason(code), lived, delay,
            )  # fmt: skip
            self.restarts.inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)

    async def _stop_all(self) -> int:
        self.stopping = True
        live = [s.proc for s in self.slots if s.proc is not None and s.proc.returncode is None]
        # One still starting has no handler yet: SIGTERM ends it at once.
        starting = {s.proc for s in self.slots if s.proc in live and not s.ready.is_set()}
        log.info("stopping %d workers (grace %gs)", len(live), self.settings.grace)
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        limit = self.settings.grace + STOP_MARGIN
        waits = [asyncio.ensure_future(p.wait()) for p in live]
        if waits:
            await asyncio.wait(waits, timeout=limit)
        killed = [p for p in live if p.returncode is None]
        for proc in killed:
            log.warning("worker pid %d did not stop within %.1fs; killing it", proc.pid, limit)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        if waits:
            await asyncio.wait(waits, timeout=5.0)
        for proc in live:
            if proc.stdin is not None:
                proc.stdin.close()
        self.alive.set(0)
        unclean = [
            p
            for p in live
            if p not in killed
            and p.returncode != 0
            and not (p in starting and p.returncode == -signal.SIGTERM)
        ]
        if self.fatal:
            log.error("balancer stopped: %s (its message is above)", self.fatal)
            return 1
        if killed or unclean:
            log.error(
                "balancer stopped uncleanly: killed %d of %d workers after %.1fs; "
                "%d exited with an error",
                len(killed), len(live), limit, len(unclean),
            )  # fmt: skip
            return 1
        log.info("every worker stopped cleanly")
        return 0


# --- a worker ---------------------------------------------------------------


async def _metrics_socket(path: str) -> asyncio.AbstractServer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(generate_latest(metrics.REGISTRY))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_unix_server(answer, path=path)


async def serve_worker(settings: BalancerSettings, spec: dict[str, Any]) -> None:
    """One worker: a balancer on the shared port until SIGTERM, SIGINT or its
    supervisor's end (end of file on stdin)."""
    gc.set_threshold(*GC_THRESHOLDS)
    stop = stop_requested()
    loop = asyncio.get_running_loop()

    def supervisor_gone() -> None:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(0)
            if not stop.is_set():
                log.warning("the supervisor is gone; stopping")
                stop.set()

    loop.add_reader(0, supervisor_gone)
    try:
        balancer = BalancerServer.from_settings(settings, reuseport=True)
    except (PolicyError, TlsConfigError) as exc:
        raise SystemExit(f"lookaside balancer: {exc}") from None
    await balancer.start()
    exporter = await _metrics_socket(spec["metrics_socket"])
    keeper = None
    if spec.get("keeper"):
        keeper = keeper_from_file(
            balancer.store, settings.state_file, f"state:{balancer.replica_id}"
        )  # fmt: skip
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await stop.wait()
    log.info("shutting down")
    exporter.close()
    if keeper is not None:
        await keeper.stop()
    await balancer.stop()


def worker_main() -> int:
    """`python -m balancer_server.workers`: the settings come as one line of
    JSON on stdin (Supervisor._spec)."""
    line = sys.stdin.buffer.readline()
    if not line:
        return 1
    spec = json.loads(line)
    settings = BalancerSettings(**spec["settings"])
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s %(name)s [w{spec['index']}] %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(serve_worker(settings, spec))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"lookaside balancer: worker {spec['index']}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(worker_main())
