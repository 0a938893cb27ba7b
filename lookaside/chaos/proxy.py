"""A TCP proxy the chaos suite controls, between one balancer replica and
Redis: it passes bytes through, cuts the link (a partition: bytes vanish in
both directions, nothing is closed, new connections hang) or slows it
(every chunk waits `delay` seconds). It runs its own event loop in a
thread, so the suite's blocking code can drive it.
"""

from __future__ import annotations

import asyncio
import threading

from lookaside.redis_process import free_port


class TcpProxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.upstream_port = upstream_port
        self.port = free_port(host)
        self.mode = "pass"
        self.delay = 0.0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-proxy", daemon=True)

    def start(self) -> TcpProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, self.host, self.port)
        )
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self.mode == "cut":
                    continue  # the partition swallows it
                if self.mode == "slow" and self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def _call(self, fn: object) -> None:
        self._loop.call_soon_threadsafe(fn)  # type: ignore[arg-type]

    def cut(self) -> None:
        self.mode = "cut"

    def slow(self, delay: float) -> None:
        self.delay = delay
        self.mode = "slow"

    def heal(self) -> None:
        """Back to passing bytes. Connections that lost bytes in a cut are
        closed (their streams are corrupt), as a TCP timeout would."""
        was_cut = self.mode == "cut"
        self.mode = "pass"
        if was_cut:

            def close_all() -> None:
                for w in list(self._writers):
                    w.close()

            self._call(close_all)

    def stop(self) -> None:
        self._call(self._loop.stop)
        self._thread.join(5)
