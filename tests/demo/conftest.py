"""Fixtures of the demo tests: in-process demo servers on a loop thread,
and demo processes that are always reaped."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from lookaside.demo.server import RouteGuideServer
from lookaside.demo.settings import ServerSettings
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from tests.support import LoopThread

ROOT = Path(__file__).resolve().parents[2]
BANNER_RE = re.compile(r"^routeguide server (\S+):(\d+) serving \((.*)\) as (\S+)$")


class InProcessServer:
    """A RouteGuideServer on its own loop, with a sync stub to it."""

    def __init__(self, loop: LoopThread, **settings: Any) -> None:
        settings.setdefault("grace", 0.0)
        self.loop = loop
        self.server = RouteGuideServer(ServerSettings(**settings))
        self.port = loop.run(self.server.start())
        self.address = f"127.0.0.1:{self.port}"
        self.name = self.server.name
        self.channel = grpc.insecure_channel(self.address)
        self.stub = rg_grpc.RouteGuideStub(self.channel)

    def stop(self) -> None:
        self.channel.close()
        self.loop.run(self.server.stop(0))


@pytest.fixture
def start_server() -> Iterator[Callable[..., InProcessServer]]:
    """Starts in-process demo servers (ServerSettings fields as keywords)."""
    loop = LoopThread("demo-server")
    started: list[InProcessServer] = []

    def start(**settings: Any) -> InProcessServer:
        s = InProcessServer(loop, **settings)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
    loop.close()


def demo_env() -> dict[str, str]:
    """The environment for demo processes, without LOOKASIDE_ROUTEGUIDE_*
    variables that would change their defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKASIDE_ROUTEGUIDE")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class DemoProcess:
    """`python -m lookaside routeguide ...` with stdout read line by line
    into a queue by a thread, so tests wait on output with a bound."""

    def __init__(self, args: list[str], stderr_path: Path) -> None:
        self.args = args
        self.stderr_path = stderr_path
        self._stderr = stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lookaside", "routeguide", *args],
            cwd=ROOT,
            env=demo_env(),
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self, timeout: float = 20.0) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no output from {self.args} within {timeout}s; stderr:\n{self.stderr()}"
            ) from None
        if line is None:
            self.lines.put(None)
            raise AssertionError(
                f"{self.args} ended (rc={self.proc.poll()}) without the expected output; "
                f"stderr:\n{self.stderr()}"
            )
        return line

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(timeout)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._stderr.close()


class DemoServerProcess(DemoProcess):
    """A demo server process; its banner line gives its port and name."""

    port = 0
    address = ""
    name = ""

    def __init__(self, args: list[str], stderr_path: Path) -> None:
        super().__init__(["server", *args], stderr_path)

    def ready(self) -> DemoServerProcess:
        """Waits for the banner (printed once serving and registered)."""
        banner = self.next_line()
        match = BANNER_RE.match(banner)
        assert match, f"unexpected banner {banner!r}"
        self.port = int(match.group(2))
        self.address = f"127.0.0.1:{self.port}"
        self.name = match.group(4)
        return self


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[..., DemoProcess]]:
    """Starts demo processes: processes("server", ...) or processes("client", ...).
    Whatever is still running at the end is killed."""
    started: list[DemoProcess] = []

    def start(command: str, *args: str) -> DemoProcess:
        err = tmp_path / f"{command}-{len(started)}.stderr"
        if command == "server":
            server = DemoServerProcess(list(args), err)
            started.append(server)
            return server.ready()
        p = DemoProcess([command, *args], err)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()
