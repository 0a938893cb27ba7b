"""Time to a thin client's first successful call when its first balancer
refuses connections (a replica down at start-up).

    .venv/bin/python bench/client_first_call.py [--runs 7]

A scripted balancer (a real grpc server) answers every stream with a list of
one backend; each run makes a new channel to [a refused port, that balancer]
and times the constructor plus one GetFeature with a 1 s deadline. Prints
the median and the worst, for the sync and the asyncio channel.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.client_lib.scripted import Client, ScriptedBalancer, server  # noqa: E402
from tests.support import RouteGuideBackend  # noqa: E402


def refused_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    peer = ScriptedBalancer()
    backend = RouteGuideBackend().start()

    def answer() -> None:
        while True:
            peer.next_stream(timeout=3600).initial().servers(server(backend.port))

    threading.Thread(target=answer, daemon=True).start()
    for kind in ("sync", "aio"):
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            client = Client(kind, "svc", [refused_address(), peer.address])
            result = client.call(timeout=1.0)
            times.append(time.perf_counter() - start)
            client.close()
            if result != backend.name:
                raise SystemExit(f"{kind}: the first call failed: {result}")
        print(
            f"{kind:5s} first call, first balancer refused: median "
            f"{statistics.median(times) * 1e3:.1f} ms, worst {max(times) * 1e3:.1f} ms "
            f"({args.runs} runs)"
        )
    backend.stop()
    peer.stop()


if __name__ == "__main__":
    main()
