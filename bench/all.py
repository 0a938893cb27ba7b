"""Every benchmark in one command: one JSON of their figures, and the table
that opens docs/benchmarks.md.

    .venv/bin/python -m bench all --json bench.json   # all of them (`make bench`; about 16 minutes on an idle machine)
    .venv/bin/python -m bench all client_path         # only those named
    .venv/bin/python -m bench all --quick --json x.json  # tiny sizes (CI): proves they run, no figure means anything

Runs each benchmark as its own process, one after the other (each one's
own output goes to stderr as it runs), then prints a markdown table of
their headline figures with the date, the commit and the command, writes
that table at the top of docs/benchmarks.md (a full run of every
benchmark only; `--no-doc` leaves the file alone), and with `--json FILE`
writes every benchmark's figures, parsed into numbers, with its command,
exit code, seconds and whole output. Exits 1 when a benchmark failed or
printed none of its figures. `bench/all.py` runs the same."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DOC = REPO / "docs" / "benchmarks.md"
# The table in DOC sits between these two lines.
TABLE_START = "<!-- bench-table: written by `python -m bench all` -->"
TABLE_END = "<!-- /bench-table -->"

# A benchmark's headline: its table cell, and the same figures as numbers.
Figures = tuple[str, dict[str, Any]]
NONE: Figures = ("", {})


def _all(pattern: str, text: str) -> list[tuple[str, ...]]:
    return [m.groups() for m in re.finditer(pattern, text, re.M)]


def _num(text: str) -> float:
    return float(text.replace(",", "").rstrip("%x"))


def _key(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def overhead(out: str) -> Figures:
    found = _all(r"^  (\S.*?)\s{2,}plain .*?thin-1 [\d,]+ \(([\d.]+)x", out)
    if not found:
        return NONE
    text = "thin-1 / plain: " + ", ".join(f"{load} {ratio}x" for load, ratio in found)
    values = {f"thin1_over_plain_{_key(load)}": _num(r) for load, r in found}
    # Over 3 backends, beside stock grpclb's (present when the run had it).
    three = []
    for line in out.splitlines():
        load = re.match(r"^  (\S.*?)\s{2,}plain [\d,]+ \(1\.000x", line)
        thin = re.search(r"thin-3 [\d,]+ \(([\d.]+)x", line)
        stock = re.search(r"grpclb-3 [\d,]+ \(([\d.]+)x", line)
        if load and thin and stock:
            key = _key(load.group(1))
            values[f"thin3_over_plain_{key}"] = _num(thin.group(1))
            values[f"grpclb3_over_plain_{key}"] = _num(stock.group(1))
            three.append(f"{load.group(1)} {thin.group(1)}x / {stock.group(1)}x")
    if three:
        text += "; thin-3 / stock grpclb-3, each to plain: " + ", ".join(three)
    return text, values


def client_path(out: str) -> Figures:
    found = _all(r"^(sync|asyncio)\s+bare .*added ([\d.]+) us per call", out)
    if not found:
        return NONE
    text = "added per call: " + ", ".join(f"{k} {us} us" for k, us in found)
    return text, {f"added_us_per_call_{k}": _num(us) for k, us in found}


def slow_backend(out: str) -> Figures:
    found = _all(r"ratios \(round_robin / least_loaded\): (.*)$", out)
    if not found:
        return NONE
    values = {
        f"round_robin_over_least_loaded_{_key(k)}": _num(v)
        for k, v in _all(r"(p50|p99) ([\d.]+)x", found[0][0])
    }
    more = _all(r"throughput least_loaded / round_robin ([\d.]+)x", found[0][0])
    if more:
        values["throughput_least_loaded_over_round_robin"] = _num(more[0][0])
    return f"round_robin / least_loaded: {found[0][0]}", values


def blackhole(out: str) -> Figures:
    lost = _all(r"^  (off|on)\s+([\d.]+%)", out)
    ratios = _all(r"ratios \(on / off\): (.*)$", out)
    if not lost or not ratios:
        return NONE
    text = "calls lost: " + ", ".join(f"{k} {v}" for k, v in lost) + f"; on / off: {ratios[0][0]}"
    values: dict[str, Any] = {f"lost_percent_outliers_{k}": _num(v) for k, v in lost}
    for label, v in _all(r"([a-z/ ]+?) ([\d.]+)x", ratios[0][0]):
        values[f"on_over_off_{_key(label)}"] = _num(v)
    return text, values


def streams(out: str) -> Figures:
    opened = _all(r"opened (\d+), refused (\d+), all first lists in ([\d.]+) s", out)
    rss = _all(r"([\d.]+) KiB per stream", out)
    rounds = _all(r"median of the rounds: p50 (\d+) ms, p99 (\d+) ms", out)
    if not (opened and rss and rounds):
        return NONE
    (n, refused, first), ((kib,),), ((p50, p99),) = opened[0], rss[:1], rounds[:1]
    text = (
        f"{int(n):,} streams: {refused} refused, first lists in {first} s, {kib} KiB per stream, "
        f"registration -> list p50 {p50} ms / p99 {p99} ms"
    )
    values: dict[str, Any] = {
        "streams": int(n),
        "refused": int(refused),
        "first_lists_s": _num(first),
        "kib_per_stream": _num(kib),
        "registration_to_list_p50_ms": _num(p50),
        "registration_to_list_p99_ms": _num(p99),
    }
    fanout = _all(r"fanout_seconds\): mean (\d+) ms", out)
    if fanout:
        values["fanout_mean_ms"] = _num(fanout[0][0])
    cpu = _all(r"CPU per update .*: median ([\d.]+) ms, ([\d.]+) us per stream", out)
    if cpu:
        values["cpu_ms_per_update"] = _num(cpu[0][0])
        values["cpu_us_per_stream_update"] = _num(cpu[0][1])
        text += f", CPU {cpu[0][1]} us per stream and update"
    return text, values


def reports(out: str) -> Figures:
    rate = _all(r": ([\d,]+) reports/s", out)
    lost = _all(r"lost (-?\d+)$", out)
    if not (rate and lost):
        return NONE
    text = f"{rate[0][0]} reports/s, lost {lost[0][0]}"
    values: dict[str, Any] = {"reports_per_s": _num(rate[0][0]), "lost": int(lost[0][0])}
    cpu = _all(r"CPU per report: balancer ([\d.]+) us", out)
    if cpu:
        text += f", balancer CPU {cpu[0][0]} us per report"
        values["balancer_cpu_us_per_report"] = _num(cpu[0][0])
    return text, values


def first_call(out: str) -> Figures:
    found = _all(r"^(sync|aio)\s+first call.*median ([\d.]+) ms, worst ([\d.]+) ms", out)
    if not found:
        return NONE
    text = "first balancer refused: " + ", ".join(
        f"{k} median {m} ms (worst {w} ms)" for k, m, w in found
    )
    values: dict[str, Any] = {}
    for k, m, w in found:
        values[f"{k}_median_ms"] = _num(m)
        values[f"{k}_worst_ms"] = _num(w)
    return text, values


def capacity(out: str) -> Figures:
    start = out.find("{")
    try:
        costs = json.loads(out[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        costs = None
    if not isinstance(costs, dict) or "cpu_us_per_stream_update" not in costs:
        return NONE
    values = {k: round(float(v), 3) for k, v in costs.items() if isinstance(v, int | float)}
    text = (
        f"balancer CPU per stream and update {values['cpu_us_per_stream_update']:.1f} us, "
        f"memory per stream {values['bytes_per_stream'] / 1024:.1f} KiB "
        f"+ {values['bytes_per_connection'] / 1024:.1f} KiB per connection; Redis per "
        f"registration {values['redis_cmds_per_registration']:.0f} commands / "
        f"{values['redis_us_per_registration']:.0f} us, per heartbeat "
        f"{values['redis_cmds_per_heartbeat']:.0f} / {values['redis_us_per_heartbeat']:.0f} us"
    )
    return text, values


def xds_vs_grpclb(out: str) -> Figures:
    rss = _all(r"^  (grpclb|xds):\s+opened (\d+) in [\d.]+ s, RSS \+([\d.]+) KiB per stream", out)
    delays = _all(r"^    (grpclb|xds)\s+p50 (\d+) ms, p99 (\d+) ms, max (\d+) ms over", out)
    calls = _all(r"^    (grpclb|xds) \((.*?)\)\s+p50 (\d+) ms, max (\d+) ms", out)
    if not (rss and delays):
        return NONE
    values: dict[str, Any] = {}
    for kind, n, kib in rss:
        values[f"{kind}_streams"] = int(n)
        values[f"{kind}_kib_per_stream"] = _num(kib)
    for kind, p50, p99, top in delays:
        values[f"{kind}_registration_to_stream_p50_ms"] = _num(p50)
        values[f"{kind}_registration_to_stream_p99_ms"] = _num(p99)
        values[f"{kind}_registration_to_stream_max_ms"] = _num(top)
    for kind, _, p50, top in calls:
        values[f"{kind}_registration_to_call_p50_ms"] = _num(p50)
        values[f"{kind}_registration_to_call_max_ms"] = _num(top)
    text = (
        ", ".join(f"{kind} {kib} KiB per stream" for kind, _, kib in rss)
        + "; registration -> stream p99: "
        + ", ".join(f"{kind} {p99} ms" for kind, _, p99, _ in delays)
    )
    if calls:
        text += "; -> first call p50: " + ", ".join(f"{k} {p50} ms" for k, _, p50, _ in calls)
    return text, values


def subsetting(out: str) -> Figures:
    goal = _all(r"^  subsetting\s+min ([\d,]+), max ([\d,]+), mean [\d.,]+, worst ([\d.]+)%", out)
    moved = _all(r"^  one backend leaves: ([\d,]+) clients", out)
    fanout = _all(r"^  its fan-out: [\d,]+ lists, ([\d,]+) bytes .*= ([\d,]+) bytes$", out)
    if not (goal and moved and fanout):
        return NONE
    (lo, hi, worst), ((n,),), ((sub, full),) = goal[0], moved[:1], fanout[:1]
    text = (
        f"20 of 1,000 backends, 10,000 clients: {lo}-{hi} per backend ({worst}% off); "
        f"a departure moves {n} clients, {sub} bytes (without subsetting {full})"
    )
    values = {
        "connections_per_backend_min": _num(lo),
        "connections_per_backend_max": _num(hi),
        "worst_off_mean_percent": _num(worst),
        "clients_moved_by_a_departure": _num(n),
        "departure_fanout_bytes": _num(sub),
        "departure_fanout_bytes_without_subsetting": _num(full),
    }
    return text, values


@dataclass(frozen=True)
class Bench:
    name: str
    what: str
    args: tuple[str, ...]
    figures: Callable[[str], Figures]
    # The arguments of a --quick run: tiny sizes, seconds in all.
    quick: tuple[str, ...] = field(default=())

    @property
    def script(self) -> str:
        return self.name.split(":")[0]

    def argv(self, quick: bool = False) -> tuple[str, ...]:
        return self.quick if quick else self.args

    def command(self, quick: bool = False) -> str:
        return " ".join((f"bench/{self.script}.py", *self.argv(quick)))


BENCHES = (
    Bench(
        "client_overhead",
        "thin client vs a plain channel",
        (),
        overhead,
        ("--seconds", "0.3", "--rounds", "1"),
    ),
    Bench(
        "client_path",
        "the thin client's own work per call",
        (),
        client_path,
        ("--calls", "2000"),
    ),
    Bench(
        "slow_backend",
        "slow backend: round_robin vs least_loaded",
        (),
        slow_backend,
        ("--case", "steady", "--seconds", "1", "--warmup", "1"),
    ),
    Bench(
        "blackhole",
        "a backend losing every call: outlier detection off vs on",
        (),
        blackhole,
        ("--seconds", "1.5"),
    ),
    Bench(
        "streams:1000",
        "streams on one balancer",
        ("--streams", "1000", "--clients", "1"),
        streams,
        ("--streams", "40", "--clients", "1", "--updates", "1"),
    ),
    Bench(
        "streams:10000",
        "streams on one balancer",
        ("--streams", "10000", "--clients", "2"),
        streams,
        ("--streams", "60", "--clients", "2", "--updates", "1"),
    ),
    Bench(
        "reports",
        "load reports into Redis",
        (),
        reports,
        ("--streams", "20", "--clients", "1", "--seconds", "1"),
    ),
    Bench(
        "subsetting",
        "deterministic subsetting",
        (),
        subsetting,
        (
            "--backends",
            "20",
            "--streams",
            "40",
            "--model-backends",
            "100",
            "--model-clients",
            "500",
        ),
    ),
    Bench(
        "xds_vs_grpclb:1000",
        "xDS beside grpclb on one balancer",
        ("--streams", "1000", "--clients", "2"),
        xds_vs_grpclb,
        ("--streams", "20", "--clients", "1", "--rounds", "1"),
    ),
    Bench(
        "xds_vs_grpclb:10000",
        "xDS beside grpclb on one balancer",
        ("--streams", "10000", "--clients", "2", "--rounds", "3"),
        xds_vs_grpclb,
        ("--streams", "40", "--clients", "2", "--rounds", "1"),
    ),
    Bench(
        "capacity",
        "per-operation costs of the capacity model (docs/capacity.md)",
        ("costs", "--streams", "1000", "10000"),
        capacity,
        ("costs", "--streams", "50", "100", "--backends", "20"),
    ),
    Bench(
        "client_first_call",
        "first call, a balancer replica down",
        ("--runs", "7"),
        first_call,
        ("--runs", "1"),
    ),
)


@dataclass
class Result:
    bench: Bench
    code: int
    seconds: float
    output: str
    text: str
    values: dict[str, Any]

    @property
    def cell(self) -> str:
        if self.code != 0:
            return f"**failed** (exit {self.code})"
        return self.text or "**no figures** in its output"

    @property
    def ok(self) -> bool:
        return self.code == 0 and bool(self.text)


def table(rows: list[Result], when: str, commit: str, command: str, quick: bool = False) -> str:
    lines = [
        f"Run of {when}, commit {commit}, `{command}`:",
        "",
        "| benchmark | command | figures |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {r.bench.what} | `{r.bench.command(quick)}` | {r.cell} |" for r in rows]
    return "\n".join(lines)


def run(bench: Bench, quick: bool = False) -> Result:
    """Runs one benchmark; its figures, or why there are none."""
    script = BENCH / f"{bench.script}.py"
    print(f"== {bench.command(quick)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(script), *bench.argv(quick)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    out = []
    for line in proc.stdout:  # shown as it comes: the long ones say what they are doing
        sys.stderr.write(line)
        out.append(line)
    code = proc.wait()
    output = "".join(out)
    text, values = bench.figures(output) if code == 0 else NONE
    return Result(bench, code, time.perf_counter() - start, output, text, values)


def write_doc(doc: Path, text: str) -> None:
    """Puts `text` between the table markers of `doc`."""
    current = doc.read_text()
    start, end = current.index(TABLE_START), current.index(TABLE_END)
    doc.write_text(current[: start + len(TABLE_START)] + "\n" + text + "\n" + current[end:])


def report(rows: list[Result], when: str, commit: str, command: str, quick: bool) -> dict[str, Any]:
    return {
        "when": when,
        "commit": commit,
        "command": command,
        "quick": quick,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average": list(os.getloadavg()),
        },
        "benchmarks": [
            {
                "name": r.bench.name,
                "what": r.bench.what,
                "command": r.bench.command(quick),
                "exit_code": r.code,
                "seconds": round(r.seconds, 2),
                "figures": r.text,
                "values": r.values,
                "output": r.output,
            }
            for r in rows
        ],
    }


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    names = [b.name for b in BENCHES]
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", metavar="NAME", help=f"of: {', '.join(names)}")
    parser.add_argument("--json", metavar="FILE", type=Path, help="write every figure here")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes: checks that each runs; figures mean nothing",
    )
    parser.add_argument(
        "--no-doc", action="store_true", help="leave the table in docs/benchmarks.md alone"
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.only if n not in names and n not in {n.split(":")[0] for n in names}]
    if unknown:
        parser.error(f"no benchmark {', '.join(unknown)}; the benchmarks are {', '.join(names)}")
    chosen = [b for b in BENCHES if not args.only or {b.name, b.script} & set(args.only)]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        or "unknown"
    )
    rows = [run(b, args.quick) for b in chosen]
    flags = (" --quick" if args.quick else "") + "".join(f" {n}" for n in args.only)
    command = "python -m bench all" + flags
    text = table(rows, when, commit, command, args.quick)
    print(text)
    if args.json is not None:
        args.json.write_text(
            json.dumps(report(rows, when, commit, command, args.quick), indent=2) + "\n"
        )
    # Only a full run of every benchmark stands for the project's figures.
    if not (args.no_doc or args.quick or args.only):
        write_doc(DOC, text)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
