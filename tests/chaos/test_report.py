"""The chaos table's arithmetic, and the command's scenario selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from lookaside.chaos.report import analyse, read_calls, table
from lookaside.chaos.scenarios import SCENARIOS
from lookaside.cli import main


def test_gap_failures_and_recovery_are_counted_from_the_calls(tmp_path: Path) -> None:
    path = tmp_path / "calls.txt"
    path.write_text(
        "9.0 OK\n"  # before the window: not counted
        "10.5 OK\n11.0 OK\n11.2 UNAVAILABLE\n12.9 DEADLINE_EXCEEDED\n13.0 OK\n14.0 OK\n"
        "14.5 O"  # a line still being written
    )
    calls = read_calls(path, 10.0, 15.0)
    o = analyse("s", "c", calls, start=10.0, fault=11.0, end=15.0)
    assert (o.calls, o.failed) == (6, 2)
    assert o.codes == {"UNAVAILABLE": 1, "DEADLINE_EXCEEDED": 1}
    assert o.longest_gap == pytest.approx(2.0)  # 11.0 .. 13.0 without a success
    assert o.recover == pytest.approx(1.9)  # the last failure ended at 12.9
    text = table([o])
    assert "| s " in text and "UNAVAILABLE 1" in text


def test_no_failure_means_no_recovery_time() -> None:
    o = analyse("s", "c", [(10.1, "OK"), (10.2, "OK")], start=10.0, fault=10.05, end=10.3)
    assert (o.failed, o.recover) == (0, 0.0)
    assert "| -" in table([o])


def test_the_command_lists_scenarios_and_refuses_unknown_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["chaos", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SCENARIOS)
    assert main(["chaos", "--scenarios", "redis-pause,meteor"]) == 2
    assert "unknown scenario 'meteor'" in capsys.readouterr().err
