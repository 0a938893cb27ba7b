"""bench/all.py: every benchmark in one command, printing the table that
opens docs/benchmarks.md. Its figure parsers read each benchmark's real
output (the runs recorded in docs/benchmarks.md); one cheap benchmark runs
end to end."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "benchmarks.md").read_text()


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_all", REPO / "bench" / "all.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


ALL = _load()

# Outputs as the benchmarks print them (runs recorded in docs/benchmarks.md).
OUTPUTS = {
    "client_overhead": """\
5 rounds of 3s per mode, the modes taking turns (194 turns of sync sequential); median calls/s
  sequential         plain 1,508 (1.000x, +0 us)   plain+token 1,467 (0.958x, +19 us)   thin-1 1,420 (0.966x, +41 us)   thin-3 1,229 (0.825x, +151 us)
  64 in flight       plain 3,090 (1.000x, +0 us)   thin-1 3,007 (0.994x, +9 us)
  aio sequential     plain 1,349 (1.000x, +0 us)   thin-1 1,322 (0.970x, +15 us)   thin-3 1,026 (0.766x, +233 us)
  aio 64 in flight   plain 3,241 (1.000x, +0 us)   thin-1 3,221 (1.001x, +2 us)
""",
    "client_path": """\
sync     bare 0.07 us   thin 0.87 us   added 0.80 us per call
asyncio  bare 0.22 us   thin 1.87 us   added 1.64 us per call
""",
    "slow_backend": """\
  round_robin       7.19    53.84    22.07     362.0     7258         3
  least_loaded      7.52    10.87     7.87    1016.8    20342       201
  ratios (round_robin / least_loaded): p50 0.96x, p99 4.95x; throughput least_loaded / round_robin 2.81x
""",
    "blackhole": """\
  outliers     lost  calls/s     ok/s  ok p99 ms   calls  ejected at end
  off        25.00%    124.5     93.6       3.39    4992               0
  on          0.11%   2461.2   2458.5       6.96   98452               1
  ratios (on / off): lost share 0.005x, successful calls/s 26.27x
""",
    "streams:1000": """\
1000 streams from 1 client processes, 100 per connection, all opened at once
  opened 1000, refused 0, all first lists in 0.50 s
  balancer RSS 60.1 MiB -> 84.9 MiB: 25.4 KiB per stream
  registration -> new list, 5 registrations one second apart:
    #1: on 1000 of 1000 streams, p50 30 ms, p99 44 ms, max 50 ms
    median of the rounds: p50 30 ms, p99 44 ms
""",
    "reports": """\
  sent 378106 reports in 10.01 s, all read by the balancer after 13.71 s: 27,587 reports/s
  Redis calls started 378106, finished 378106 (each report carries 1 and 1): lost 0
""",
    "client_first_call": """\
sync  first call, first balancer refused: median 13.8 ms, worst 44.0 ms (7 runs)
aio   first call, first balancer refused: median 7.4 ms, worst 12.2 ms (7 runs)
""",
}


def _figures(name: str) -> str:
    bench = next(b for b in ALL.BENCHES if b.name == name)
    return bench.figures(OUTPUTS[name])  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_each_benchmarks_figures_are_read_from_its_output(name: str) -> None:
    figures = _figures(name)
    assert figures, name
    # The docs' table holds the same figures for the same runs.
    assert figures in DOC, (name, figures)
    bench = next(b for b in ALL.BENCHES if b.name == name)
    assert bench.figures("Traceback (most recent call last):\n") == ""


def test_docs_open_with_the_table_and_its_command() -> None:
    first = DOC.index("| benchmark | command | figures |")
    assert first < DOC.index("\n## ", DOC.index("## Current figures") + 1)
    assert "make bench" in DOC[:first]
    for bench in ALL.BENCHES:
        assert f"`{bench.command}`" in DOC[first : DOC.index("\n\n", first)], bench.command
    make = (REPO / "Makefile").read_text()
    assert "bench/all.py" in make.split("\nbench:", 1)[1].split("\n\n", 1)[0]


def test_one_benchmark_runs_end_to_end() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "all.py"), "client_path"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Run of ") and "`bench/all.py client_path`" in lines[0]
    [row] = [line for line in lines if line.startswith("| the thin client's own work")]
    assert "`bench/client_path.py`" in row and "added per call: sync " in row and "asyncio" in row


def test_an_unknown_benchmark_is_refused_with_the_names() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "all.py"), "nope"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "no benchmark nope" in done.stderr and "client_path" in done.stderr
    assert "Traceback" not in done.stderr
