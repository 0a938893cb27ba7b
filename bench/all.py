"""Every benchmark in one command, and the table that opens
docs/benchmarks.md.

    .venv/bin/python bench/all.py                 # all of them (`make bench`; about 10 minutes)
    .venv/bin/python bench/all.py client_path     # only those named

Runs each benchmark as its own process, one after the other (each one's
own output goes to stderr as it runs), then prints a markdown table of
their headline figures with the date, the commit and the command. Exits 1
when a benchmark failed or printed none of its figures."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


def _all(pattern: str, text: str) -> list[tuple[str, ...]]:
    return [m.groups() for m in re.finditer(pattern, text, re.M)]


def overhead(out: str) -> str:
    found = _all(r"^  (\S.*?)\s{2,}plain .*?thin-1 [\d,]+ \(([\d.]+)x", out)
    return (
        "thin-1 / plain: " + ", ".join(f"{load} {ratio}x" for load, ratio in found) if found else ""
    )


def client_path(out: str) -> str:
    found = _all(r"^(sync|asyncio)\s+bare .*added ([\d.]+) us per call", out)
    return "added per call: " + ", ".join(f"{k} {us} us" for k, us in found) if found else ""


def slow_backend(out: str) -> str:
    found = _all(r"ratios \(round_robin / least_loaded\): (.*)$", out)
    return f"round_robin / least_loaded: {found[0][0]}" if found else ""


def blackhole(out: str) -> str:
    lost = _all(r"^  (off|on)\s+([\d.]+%)", out)
    ratios = _all(r"ratios \(on / off\): (.*)$", out)
    if not lost or not ratios:
        return ""
    return "calls lost: " + ", ".join(f"{k} {v}" for k, v in lost) + f"; on / off: {ratios[0][0]}"


def streams(out: str) -> str:
    opened = _all(r"opened (\d+), refused (\d+), all first lists in ([\d.]+) s", out)
    rss = _all(r"([\d.]+) KiB per stream", out)
    rounds = _all(r"median of the rounds: p50 (\d+) ms, p99 (\d+) ms", out)
    if not (opened and rss and rounds):
        return ""
    (n, refused, first), ((kib,),), ((p50, p99),) = opened[0], rss[:1], rounds[:1]
    return (
        f"{int(n):,} streams: {refused} refused, first lists in {first} s, {kib} KiB per stream, "
        f"registration -> list p50 {p50} ms / p99 {p99} ms"
    )


def xds_vs_grpclb(out: str) -> str:
    n = _all(r"^(\d+) raw streams of each kind", out)
    rss = {
        k: kib
        for k, kib in _all(
            r"^  (grpclb|xds):\s+opened \d+ in [\d.]+ s, RSS \+([\d.]+) KiB per stream", out
        )
    }
    delays = {
        k: (p50, p99)
        for k, p50, p99 in _all(r"^    (grpclb|xds)\s+p50 (\d+) ms, p99 (\d+) ms", out)
    }
    kinds = ("grpclb", "xds")
    if not n or any(k not in rss or k not in delays for k in kinds):
        return ""
    return (
        f"{int(n[0][0]):,} streams of each kind: KiB per stream "
        + " / ".join(f"{k} {rss[k]}" for k in kinds)
        + "; registration -> every stream p50/p99 "
        + ", ".join(f"{k} {delays[k][0]}/{delays[k][1]} ms" for k in kinds)
    )


def reports(out: str) -> str:
    rate = _all(r": ([\d,]+) reports/s", out)
    lost = _all(r"lost (-?\d+)$", out)
    return f"{rate[0][0]} reports/s, lost {lost[0][0]}" if rate and lost else ""


def first_call(out: str) -> str:
    found = _all(r"^(sync|aio)\s+first call.*median ([\d.]+) ms, worst ([\d.]+) ms", out)
    return (
        "first balancer refused: "
        + ", ".join(f"{k} median {m} ms (worst {w} ms)" for k, m, w in found)
        if found
        else ""
    )


@dataclass(frozen=True)
class Bench:
    name: str
    what: str
    args: tuple[str, ...]
    figures: Callable[[str], str]

    @property
    def command(self) -> str:
        return " ".join((f"bench/{self.name.split(':')[0]}.py", *self.args))


BENCHES = (
    Bench("client_overhead", "thin client vs a plain channel", (), overhead),
    Bench("client_path", "the thin client's own work per call", (), client_path),
    Bench("slow_backend", "slow backend: round_robin vs least_loaded", (), slow_backend),
    Bench("blackhole", "a backend losing every call: outlier detection off vs on", (), blackhole),
    Bench(
        "streams:1000", "streams on one balancer", ("--streams", "1000", "--clients", "1"), streams
    ),
    Bench(
        "streams:10000",
        "streams on one balancer",
        ("--streams", "10000", "--clients", "2"),
        streams,
    ),
    Bench(
        "xds_vs_grpclb:1000",
        "xDS beside grpclb streams on one balancer",
        ("--streams", "1000", "--clients", "2"),
        xds_vs_grpclb,
    ),
    Bench(
        "xds_vs_grpclb:10000",
        "xDS beside grpclb streams on one balancer",
        ("--streams", "10000", "--clients", "2", "--rounds", "3"),
        xds_vs_grpclb,
    ),
    Bench("reports", "load reports into Redis", (), reports),
    Bench("client_first_call", "first call, a balancer replica down", ("--runs", "7"), first_call),
)


def table(rows: list[tuple[Bench, str]], when: str, commit: str, command: str) -> str:
    lines = [
        f"Run of {when}, commit {commit}, `{command}`:",
        "",
        "| benchmark | command | figures |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {b.what} | `{b.command}` | {figures} |" for b, figures in rows]
    return "\n".join(lines)


def run(bench: Bench) -> str:
    """The benchmark's figures, or why there are none."""
    script = BENCH / f"{bench.name.split(':')[0]}.py"
    print(f"== {bench.command}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(
        [sys.executable, str(script), *bench.args],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    out = []
    for line in proc.stdout:  # shown as it comes: the long ones say what they are doing
        sys.stderr.write(line)
        out.append(line)
    code = proc.wait()
    if code != 0:
        return f"**failed** (exit {code})"
    return bench.figures("".join(out)) or "**no figures** in its output"


def main(argv: list[str] | None = None) -> int:
    names = [b.name for b in BENCHES]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", metavar="NAME", help=f"of: {', '.join(names)}")
    args = parser.parse_args(argv)
    unknown = [n for n in args.only if n not in names and n not in {n.split(":")[0] for n in names}]
    if unknown:
        parser.error(f"no benchmark {', '.join(unknown)}; the benchmarks are {', '.join(names)}")
    chosen = [
        b for b in BENCHES if not args.only or {b.name, b.name.split(":")[0]} & set(args.only)
    ]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        or "unknown"
    )
    rows = [(b, run(b)) for b in chosen]
    command = "bench/all.py" + "".join(f" {n}" for n in args.only)
    print(table(rows, when, commit, command))
    return 1 if any(f.startswith("**") for _, f in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
