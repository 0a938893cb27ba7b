"""Small asyncio helpers."""

from __future__ import annotations

import asyncio


def cancelling() -> bool:
    """True when the current task has been asked to cancel.

    Background loops that catch connection errors must check it: redis-py
    can turn a cancellation into a TimeoutError (an OSError), which would
    otherwise be swallowed and leave the loop running forever.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def cancel_and_wait(tasks: list[asyncio.Task[None]], limit: float = 3.0) -> None:
    """Cancels background tasks and waits for them, but never forever: a task
    whose cancellation was swallowed by a library is left behind with a log
    line rather than hanging the shutdown."""
    live = [t for t in tasks if not t.done()]
    for t in live:
        t.cancel()
    if not live:
        return
    _, pending = await asyncio.wait(live, timeout=limit)
    if pending:
        import logging

        logging.getLogger("lookaside").warning(
            "tasks did not stop within %.0fs: %s", limit, ", ".join(t.get_name() for t in pending)
        )


def stop_requested() -> asyncio.Event:
    """An event set by the first SIGINT or SIGTERM (the process's stop
    request). The handlers are in place when this returns: call it before
    serving, so that no signal in between kills the process unhandled."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def until_signalled() -> None:
    """Returns on the first SIGINT or SIGTERM (the process's stop request)."""
    await stop_requested().wait()
