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
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client_lib import aio_calls, calls  # noqa: E402
from client_lib.picker import CallCounters, Pick, Picker  # noqa: E402
from client_lib.retry import RetryConfig  # noqa: E402

OK = __import__("grpc").StatusCode.OK

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


class _Finished:
    """A finished grpc future: OK, done-callbacks run at once."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self, timeout: Any = None) -> Any:
        return self.value

    def code(self) -> Any:
        return OK

    def trailing_metadata(self) -> Any:
        return ()

    def add_done_callback(self, fn: Any) -> None:
        fn(self)


class _SyncMc:
    """A sync multi-callable that answers at once."""

    def __call__(self, request: Any, timeout: Any = None, metadata: Any = None, *_: Any) -> Any:
        return request

    def future(self, request: Any, timeout: Any = None, metadata: Any = None, *_: Any) -> Any:
        return _Finished(request)


_sync_mc = _SyncMc()


def _aio_mc(request: Any, **_: Any) -> _Done:
    return _Done(request)


class _Sub:
    address = "127.0.0.1:1"
    parked = False  # client_lib._spin: nothing to keep

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


def _cpu_per_call(run: Callable[[int], None], n: int, repeats: int) -> float:
    """The least CPU time per call over `repeats` runs of n calls, in us."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        run(n)
        best = min(best, time.process_time() - start)
    return best / n * 1e6


def _python_calls(run: Callable[[int], None], n: int = 1000) -> float:
    """Python and C function calls per call, as a profile hook sees them."""
    count = 0

    def hook(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(hook)
    try:
        run(n)
    finally:
        sys.setprofile(None)
    return count / n


def _loop(call: Callable[[], Any]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            call()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n, repeats = args.calls, args.repeats

    def report(name: str, bare: Callable[[int], None], thin: Callable[[int], None]) -> None:
        bare_cpu, thin_cpu = _cpu_per_call(bare, n, repeats), _cpu_per_call(thin, n, repeats)
        bare_calls, thin_calls = _python_calls(bare), _python_calls(thin)
        print(
            f"{name:8s} bare {bare_cpu:.2f} us   thin {thin_cpu:.2f} us   "
            f"added {thin_cpu - bare_cpu:.2f} us per call   "
            f"(function calls per call: bare {bare_calls:.0f}, thin {thin_calls:.0f}, "
            f"added {thin_calls - bare_calls:.0f})"
        )

    sync_thin = calls.UnaryUnary(_Channel(_sync_mc), METHOD, None, None, True)  # type: ignore[arg-type]

    def bare_future() -> None:
        _sync_mc.future(1, None, TOKEN, None, None, None).add_done_callback(_ignore)

    report(
        "sync",
        _loop(lambda: _sync_mc(1, None, TOKEN, None, None, None)),
        _loop(lambda: sync_thin(1)),
    )
    report("future", _loop(bare_future), _loop(lambda: sync_thin.future(1).result()))

    async def aio() -> None:
        ch = _Channel(_aio_mc)
        thin_mc = aio_calls.MultiCallable(ch, "unary_unary", METHOD, None, None, True)  # type: ignore[arg-type]

        def awaiting(make: Callable[[], Any]) -> Callable[[int], None]:
            async def calls_(k: int) -> None:
                for _ in range(k):
                    await make()

            # run_until_complete is not reentrant: drive the coroutine by hand
            # (every awaitable here is done at once, so it never suspends).
            def run(k: int) -> None:
                coro = calls_(k)
                try:
                    coro.send(None)
                except StopIteration:
                    return
                raise RuntimeError("the stand-in call suspended")

            return run

        report(
            "asyncio",
            awaiting(lambda: _aio_mc(1, metadata=TOKEN)),
            awaiting(lambda: thin_mc(1)),
        )

    asyncio.run(aio())


def _ignore(_: Any) -> None:
    return None


if __name__ == "__main__":
    main()
