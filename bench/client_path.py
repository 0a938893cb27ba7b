"""What the thin client's own per-call path costs, in process.

    .venv/bin/python bench/client_path.py [--calls 200000]

End to end (bench/client_overhead.py) a call is some 500-700 us on this
machine, and runs differ by a few percent, so the thin client's own share
cannot be read from them. Here the sub-channel's grpc multi-callable is
replaced by a function that returns at once (sync) or an awaitable that
is done at once (asyncio), so what is timed is exactly what the thin
client adds around a grpc call: the pick, the multi-callable lookup, the
lb-token metadata, the ClientStats counting and, on asyncio, the call
object. It prints microseconds per call for the bare stand-in and through
the thin client's multi-callable, and their difference.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client_lib import aio_calls, calls  # noqa: E402
from client_lib.picker import CallCounters, Pick, Picker  # noqa: E402
from client_lib.retry import RetryConfig  # noqa: E402

METHOD = "/routeguide.RouteGuide/GetFeature"
TOKEN = (("lb-token", "0123456789ab.1cxrnexvm"),)


class _Done:
    """An awaitable that is done at once, as a finished grpc.aio call."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Any:
        return self.value
        yield  # pragma: no cover - makes this a generator


def _sync_mc(request: Any, timeout: Any = None, metadata: Any = None, *_: Any) -> Any:
    return request


def _aio_mc(request: Any, **_: Any) -> _Done:
    return _Done(request)


class _Sub:
    address = "127.0.0.1:1"

    def __init__(self, mc: Any) -> None:
        self.mc = mc
        self.methods: dict[Any, Any] = {}

    def multicallable(self, key: Any, registered: bool) -> Any:
        self.methods[key] = self.mc
        return self.mc


class _Picking:
    """client_lib.attempts.Picking over one READY backend."""

    def __init__(self, mc: Any, counters: CallCounters) -> None:
        pick = Pick(_Sub(mc), TOKEN, "0123456789ab")
        self.counters = counters
        self.pick = Picker([pick], (pick,)).pick


class _Channel:
    """What the multi-callables read from their channel."""

    def __init__(self, mc: Any) -> None:
        self.counters = CallCounters()
        self.retry = RetryConfig()
        self.picking = _Picking(mc, self.counters)
        self.loop_time = time.monotonic


def _per_call(fn: Any, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    n = parser.parse_args().calls

    sync_thin = calls.UnaryUnary(_Channel(_sync_mc), METHOD, None, None, True)  # type: ignore[arg-type]
    bare = _per_call(lambda: _sync_mc(1, None, TOKEN, None, None, None), n)
    thin = _per_call(lambda: sync_thin(1), n)
    print(f"sync     bare {bare:.2f} us   thin {thin:.2f} us   added {thin - bare:.2f} us per call")

    async def aio() -> tuple[float, float]:
        ch = _Channel(_aio_mc)
        thin_mc = aio_calls.MultiCallable(ch, "unary_unary", METHOD, None, None, True)  # type: ignore[arg-type]

        async def run(make: Any) -> float:
            start = time.perf_counter()
            for _ in range(n):
                await make()
            return (time.perf_counter() - start) / n * 1e6

        return await run(lambda: _aio_mc(1, metadata=TOKEN)), await run(lambda: thin_mc(1))

    bare, thin = asyncio.run(aio())
    print(f"asyncio  bare {bare:.2f} us   thin {thin:.2f} us   added {thin - bare:.2f} us per call")


if __name__ == "__main__":
    main()
