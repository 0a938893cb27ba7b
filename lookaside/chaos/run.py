"""`lookaside chaos` (or `python bench/chaos.py`): faults under steady load,
and a table of what each client kind saw.

It starts a lab of local processes (Redis with append-only persistence, two
balancer replicas, the DNS responder, 4 routeguide backends) and three load
clients at once (thin sync, thin asyncio, stock grpcio through DNS SRV),
then, one scenario at a time: a second of steady load, the fault, the
observation time, and every process brought back before the next one.
For each scenario and client the table gives the calls finished in the
window, those that failed, the longest gap without a successful call, and
the time from the fault to the end of the last failed call.

    lookaside chaos                          # every scenario, default lengths
    lookaside chaos --scenarios redis-pause,backend-kill --seconds 5 --observe 5
    lookaside chaos --list
"""

from __future__ import annotations

import argparse
import sys
import time

from lookaside.chaos.cluster import ChaosLab, ClusterChaosLab
from lookaside.chaos.report import Outcome, analyse, read_calls, table
from lookaside.chaos.scenarios import CLUSTER_SCENARIOS, SCENARIOS

PRE = 1.0
SETTLE = 3.0
SETTLE_LIMIT = 60.0


def settle(lab: ChaosLab, quiet: float = SETTLE, limit: float = SETTLE_LIMIT) -> bool:
    """Waits until no client has failed a call for `quiet` seconds, so that
    one scenario's window holds none of the previous one's failures. False
    when that did not happen within `limit` seconds."""
    deadline = time.monotonic() + limit
    while True:
        now = time.monotonic()
        recent = [
            code
            for kind in lab.client_kinds
            for _, code in read_calls(lab.calls_file(kind), now - quiet, now)
        ]
        if recent and "OK" in recent and all(code == "OK" for code in recent):
            return True
        if now > deadline:
            return False
        time.sleep(0.5)


def run_scenario(lab: ChaosLab, name: str, seconds: float, observe: float) -> list[Outcome]:
    fn = SCENARIOS[name][0]
    settled = settle(lab)
    start = time.monotonic()
    time.sleep(PRE)
    fault = time.monotonic()
    lab.fault_at = None
    lab.cooldown = 0.0
    note = fn(lab, seconds)
    fault = lab.fault_at or fault
    time.sleep(observe)
    end = time.monotonic()
    time.sleep(0.5)  # the clients' files are flushed every 0.2 s
    outcomes = []
    for kind in lab.client_kinds:
        calls = read_calls(lab.calls_file(kind), start, end)
        o = analyse(name, kind, calls, start, fault, end)
        o.note = note if settled else f"{note}; load never quiet before the fault".lstrip("; ")
        outcomes.append(o)
    lab.repair()
    time.sleep(lab.cooldown)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="lookaside chaos", description=__doc__.splitlines()[0] if __doc__ else ""
    )
    add_arguments(p)
    return run(p.parse_args(argv))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenarios", default="all", help="comma-separated names, or all")
    p.add_argument(
        "--seconds", type=float, default=None, help="length of every fault (default: its own)"
    )
    p.add_argument("--observe", type=float, default=10.0, help="seconds watched after a fault")
    p.add_argument("--rate", type=float, default=100.0, help="calls per second per client")
    p.add_argument("--call-timeout", type=float, default=2.0, help="deadline of each call")
    p.add_argument("--clients", default="thin-sync,thin-aio,grpcio-dns")
    p.add_argument(
        "--no-retries",
        dest="retries",
        action="store_false",
        help="clients without the retryPolicy on GetFeature",
    )
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs, call files)")


def run(args: argparse.Namespace) -> int:
    if args.list:
        for name, (_, seconds, what) in SCENARIOS.items():
            print(f"{name:22s} {seconds:5.0f}s  {what}")
        return 0
    names = list(SCENARIOS) if args.scenarios == "all" else args.scenarios.split(",")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"lookaside chaos: unknown scenario {unknown[0]!r}; see --list", file=sys.stderr)
        return 2
    outcomes: list[Outcome] = []
    # The single-Redis scenarios first, then those that need the Redis
    # Cluster lab: one lab each, started only when a scenario needs it.
    for lab_class in (ChaosLab, ClusterChaosLab):
        group = [n for n in names if (n in CLUSTER_SCENARIOS) == (lab_class is ClusterChaosLab)]
        if group:
            outcomes += run_group(lab_class, group, args)
    print(table(outcomes))
    return 0


def run_group(
    lab_class: type[ChaosLab], names: list[str], args: argparse.Namespace
) -> list[Outcome]:
    lab = lab_class(
        clients=tuple(args.clients.split(",")),
        rate=args.rate,
        call_timeout=args.call_timeout,
        retries=args.retries,
    )
    outcomes: list[Outcome] = []
    try:
        lab.start()
        print(f"lab up in {lab.dir}; {len(names)} scenarios", file=sys.stderr, flush=True)
        for name in names:
            seconds = SCENARIOS[name][1] if args.seconds is None else args.seconds
            print(f"- {name} ({seconds:g}s) ...", file=sys.stderr, flush=True)
            outcomes += run_scenario(lab, name, seconds, args.observe)
    finally:
        lab.stop()
        if not args.keep:
            lab.cleanup()
    return outcomes


def add_subcommand(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("chaos", help="faults under load, and a table of lost calls")
    add_arguments(p)
    p.set_defaults(func=run)


if __name__ == "__main__":
    sys.exit(main())
