"""`python -m bench all` (bench/all.py): every benchmark in one command,
one JSON of their figures and the table that opens docs/benchmarks.md. Its
figure parsers read each benchmark's real output (the runs recorded in
docs/benchmarks.md); the cheap benchmarks run end to end at --quick sizes."""

from __future__ import annotations

import importlib.util
import json
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
5 rounds of 3s per mode, the modes taking turns (249 turns of sync sequential); median calls/s of a block (median ratio to the plain block of the same turn, added microseconds per call)
  sequential         plain 1,841 (1.000x, +0 us)   plain+token 1,786 (0.961x, +17 us)   thin-1 1,750 (0.937x, +28 us)   plain-rr3 1,469 (0.796x, +137 us)   thin-3 1,569 (0.842x, +94 us)
  64 in flight       plain 3,630 (1.000x, +0 us)   plain+token 3,667 (1.014x, -3 us)   thin-1 3,570 (0.989x, +5 us)   plain-rr3 2,835 (0.787x, +77 us)   thin-3 3,247 (0.899x, +33 us)
  aio sequential     plain 1,567 (1.000x, +0 us)   thin-1 1,513 (0.964x, +23 us)   thin-3 1,349 (0.861x, +103 us)
  aio 64 in flight   plain 3,921 (1.000x, +0 us)   thin-1 3,925 (1.010x, -0 us)   thin-3 3,706 (0.940x, +15 us)
""",
    "client_path": """\
sync     bare 0.10 us   thin 1.25 us   added 1.15 us per call
asyncio  bare 0.41 us   thin 2.81 us   added 2.39 us per call
""",
    "slow_backend": """\
least_loaded, 3 backends at 5 ms; one turns 50 ms at t=8s; 8 calls in flight
  its share of the calls in the 2 s before: 33.3%
      window s  its share   calls
    0.0- 0.5      31.4%     191
    0.5- 1.0      31.5%     197
    1.0- 1.5       1.9%     482
    1.5- 2.0       1.8%     490
    2.0- 2.5       0.6%     542
    2.5- 3.0       0.6%     545
    3.0- 3.5       0.6%     545
    3.5- 4.0       0.4%     535
    4.0- 4.5       0.5%     551
    4.5- 5.0       0.6%     533
    5.0- 5.5       0.4%     544
    5.5- 6.0       0.6%     532
  its share fell below half of before within 1.5s of the switch
3 backends, delay 5 ms, one at 50 ms; 8 calls in flight for 20s after 8s warm-up
  policy          p50 ms   p99 ms  mean ms   calls/s    calls  list len
  round_robin       6.43    52.90    21.47     372.1     7460         3
  least_loaded      7.09    10.41     7.45    1073.3    21473       201
  ratios (round_robin / least_loaded): p50 0.91x, p99 5.08x; throughput least_loaded / round_robin 2.88x
""",
    "blackhole": """\
4 backends, one black-holing every call; 8 calls in flight with a 250 ms deadline for 40s per pool
  outliers     lost  calls/s     ok/s  ok p99 ms   calls  ejected at end
  off        25.00%    124.9     94.2       2.81    5024               0
  on          0.11%   2347.0   2344.5       6.82   93883               1
  ratios (on / off): lost share 0.004x, successful calls/s 24.89x
""",
    "streams:1000": """\
1000 streams from 1 client processes, 100 per connection, all opened at once
  opened 1000, refused 0, all first lists in 0.34 s
  balancer RSS 68.1 MiB -> 92.7 MiB: 25.2 KiB per stream
  registration -> new list, 5 registrations one second apart:
    #1: on 1000 of 1000 streams, p50 23 ms, p99 28 ms, max 28 ms
    #2: on 1000 of 1000 streams, p50 26 ms, p99 34 ms, max 34 ms
    #3: on 1000 of 1000 streams, p50 28 ms, p99 39 ms, max 39 ms
    #4: on 1000 of 1000 streams, p50 24 ms, p99 33 ms, max 33 ms
    #5: on 1000 of 1000 streams, p50 23 ms, p99 32 ms, max 35 ms
    median of the rounds: p50 24 ms, p99 33 ms
  balancer's own fan-out (new list -> last write, lookaside_balancer_fanout_seconds): mean 38 ms over 5 updates
""",
    "reports": """\
1000 streams from 2 client processes, reporting as fast as the balancer takes them for 10s
  sent 624137 reports in 10.01 s, all read by the balancer after 20.12 s: 31,013 reports/s
  balancer wrote 624137 (lookaside_balancer_load_reports_total); Redis holds 624137 reports
  Redis calls started 624137, finished 624137 (each report carries 1 and 1): lost 0
""",
    "subsetting": """\
assignment: 1,000 backends, 10,000 clients, subset size 20
  subsetting           min 200, max 200, mean 200.0, worst 0.0% off the mean
  hashing per client   min 160, max 242, mean 200.0, worst 21.0% off the mean
  no subsetting        every backend 10,000 connections
  (739 ms to seat the clients, 74 us each)
  one backend leaves: 200 clients get a new subset (members replaced per client: {1: 200}); min 200, max 210, mean 200.2, worst 4.9% off the mean
  its fan-out: 200 lists, 108,600 bytes (20 distinct lists serialized); without subsetting 10,000 lists of 26,977 bytes = 269,770,000 bytes
""",
    "xds_vs_grpclb:1000": """\
1000 raw streams of each kind on one balancer (a pool per kind), 2 client processes per kind, 100 per connection, opened grpclb first
  grpclb: opened 1000 in 0.45 s, RSS +24.9 KiB per stream
  xds:    opened 1000 in 1.48 s, RSS +28.7 KiB per stream
  registration -> the new list/assignment on every stream, 5 rounds:
    grpclb  p50 61 ms, p99 107 ms, max 108 ms over 5000 arrivals
    xds     p50 71 ms, p99 162 ms, max 165 ms over 5000 arrivals
  the balancer's own part: grpclb new list -> last write (lookaside_balancer_fanout_seconds) mean 64 ms over 5 updates; xDS change -> write, per stream (lookaside_balancer_xds_update_seconds) mean 130 ms over 5005 writes
  registration -> first call on the new backend, per round:
    grpclb (thin client)  p50 84 ms, max 112 ms  (105, 84, 63, 55, 112 ms)
    xds (stock grpcio)    p50 60 ms, max 142 ms  (97, 42, 60, 36, 142 ms)
""",
    "xds_vs_grpclb:10000": """\
10000 raw streams of each kind on one balancer (a pool per kind), 2 client processes per kind, 100 per connection, opened grpclb first
  grpclb: opened 10000 in 5.03 s, RSS +25.5 KiB per stream
  xds:    opened 10000 in 14.61 s, RSS +26.2 KiB per stream
  registration -> the new list/assignment on every stream, 3 rounds:
    grpclb  p50 368 ms, p99 858 ms, max 880 ms over 30000 arrivals
    xds     p50 1052 ms, p99 1936 ms, max 1998 ms over 30000 arrivals
  the balancer's own part: grpclb new list -> last write (lookaside_balancer_fanout_seconds) mean 702 ms over 3 updates; xDS change -> write, per stream (lookaside_balancer_xds_update_seconds) mean 1559 ms over 30003 writes
  registration -> first call on the new backend, per round:
    grpclb (thin client)  p50 322 ms, max 617 ms  (322, 617, 172 ms)
    xds (stock grpcio)    p50 631 ms, max 1281 ms  (503, 631, 1281 ms)
""",
    "client_first_call": """\
sync  first call, first balancer refused: median 8.7 ms, worst 13.0 ms (7 runs)
aio   first call, first balancer refused: median 6.6 ms, worst 9.0 ms (7 runs)
""",
}


def _figures(name: str) -> tuple[str, dict[str, object]]:
    bench = next(b for b in ALL.BENCHES if b.name == name)
    return bench.figures(OUTPUTS[name])  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_each_benchmarks_figures_are_read_from_its_output(name: str) -> None:
    text, values = _figures(name)
    assert text and values, name
    # The docs' table holds the same figures for the same runs.
    assert text in DOC, (name, text)
    # Every number of the cell is in the JSON values too.
    assert all(isinstance(v, int | float) for v in values.values()), values
    bench = next(b for b in ALL.BENCHES if b.name == name)
    assert bench.figures("Traceback (most recent call last):\n") == ("", {})


def test_figures_as_numbers() -> None:
    assert _figures("streams:1000")[1] == {
        "streams": 1000,
        "refused": 0,
        "first_lists_s": 0.34,
        "kib_per_stream": 25.2,
        "registration_to_list_p50_ms": 24.0,
        "registration_to_list_p99_ms": 33.0,
        "fanout_mean_ms": 38.0,
    }
    assert _figures("reports")[1] == {"reports_per_s": 31013.0, "lost": 0}
    assert _figures("client_overhead")[1]["thin1_over_plain_aio_64_in_flight"] == 1.010
    three = OUTPUTS["client_overhead"].replace(
        "thin-3 3,706 (0.940x, +15 us)",
        "thin-3 3,706 (0.940x, +15 us)   grpclb-3 3,600 (0.918x, +20 us)",
    )
    text, values = ALL.overhead(three)
    assert values["thin3_over_plain_aio_64_in_flight"] == 0.940
    assert values["grpclb3_over_plain_aio_64_in_flight"] == 0.918
    assert "thin-3 / stock grpclb-3, each to plain: aio 64 in flight 0.940x / 0.918x" in text


def test_docs_open_with_the_table_between_its_markers() -> None:
    start, end = DOC.index(ALL.TABLE_START), DOC.index(ALL.TABLE_END)
    first = DOC.index("| benchmark | command | figures |")
    assert start < first < end < DOC.index("\n## ", DOC.index("## Current figures") + 1)
    assert "make bench" in DOC[:first] and "python -m bench all" in DOC[:first]
    for bench in ALL.BENCHES:
        assert f"`{bench.command()}`" in DOC[first:end], bench.command()
    make = (REPO / "Makefile").read_text()
    assert "-m bench all --json" in make.split("\nbench:", 1)[1].split("\n\n", 1)[0]


def test_the_table_is_written_between_the_markers(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# B\n\n{ALL.TABLE_START}\nold table\n{ALL.TABLE_END}\n\n## Next\n")
    ALL.write_doc(doc, "| new | table |")
    assert doc.read_text() == (
        f"# B\n\n{ALL.TABLE_START}\n| new | table |\n{ALL.TABLE_END}\n\n## Next\n"
    )


QUICK = ("client_path", "streams:1000", "reports")


def test_the_cheap_benchmarks_run_end_to_end_at_quick_sizes(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    before = (REPO / "docs" / "benchmarks.md").read_text()
    done = subprocess.run(
        [sys.executable, "-m", "bench", "all", "--quick", "--json", str(out), *QUICK],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Run of ") and "`python -m bench all --quick client_path" in lines[0]
    [row] = [line for line in lines if line.startswith("| the thin client's own work")]
    assert "`bench/client_path.py --calls 2000`" in row and "added per call: sync " in row
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["machine"]["cpus"]
    names = [b["name"] for b in report["benchmarks"]]
    assert names == ["client_path", "streams:1000", "reports"]
    for b in report["benchmarks"]:
        assert b["exit_code"] == 0 and b["figures"] and b["values"], b["name"]
        assert b["output"] and b["seconds"] > 0
    streams = report["benchmarks"][1]["values"]
    # At this size the CPU figure is noise (idle subtracted), but it is read.
    assert streams["refused"] == 0 and streams["cpu_us_per_stream_update"] >= 0
    # Neither a quick run nor a partial one rewrites the project's figures.
    assert (REPO / "docs" / "benchmarks.md").read_text() == before


def test_an_unknown_benchmark_is_refused_with_the_names() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "all", "nope"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "no benchmark nope" in done.stderr and "client_path" in done.stderr
    assert "Traceback" not in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "bench", "nope"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "no benchmark 'nope'" in done.stderr
    assert "Traceback" not in done.stderr
