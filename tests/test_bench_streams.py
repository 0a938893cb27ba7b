"""bench/streams.py --workers: a balancer of two worker processes, end to
end at a tiny size: every stream is opened and gets the new list, the
streams are counted per worker from the aggregated /metrics, every worker
holding streams observes one fan-out for the update, the clients' exit
ends every stream on the balancer, and the balancer stops cleanly on
SIGTERM."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_streams_over_two_workers() -> None:
    done = subprocess.run(
        [sys.executable, "bench/streams.py", "--workers", "2", "--streams", "40",
         "--clients", "2", "--streams-per-connection", "1", "--updates", "1", "--wait", "60"],
        cwd=REPO, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out + done.stderr[-3000:]
    assert "balancer with 2 workers" in out
    assert "opened 40, refused 0," in out
    # Each update reached every stream.
    assert out.count("on 40 of 40 streams") == 1, out
    [held] = re.findall(r"streams per worker: w0 (\d+), w1 (\d+); worker restarts 0", out)
    assert sum(map(int, held)) == 40, out
    holding = sum(int(n) > 0 for n in held)
    [fanned] = re.findall(r"fan-outs per update, one per worker: \[([\d, ]+)\]", out)
    assert [int(n) for n in fanned.split(", ")] == [holding], out
    assert "(0 left open)" in out, out
    assert "balancer stopped on SIGTERM in" in out and "exit status 0" in out
