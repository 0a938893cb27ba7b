"""Both adapters of the registry port implement it, as mypy sees them:
lookaside_registry/port_check.py type-checks only while RegistryStore and
MemoryStore have every method of lookaside_registry.port.Registry with a
compatible signature; the tests that hand a MemoryStore to the servers and
their parts must type-check without an ignore. And the check can fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import require_module

ROOT = Path(__file__).resolve().parents[2]
CHECKED = [
    "lookaside_registry/port_check.py",
    "tests/balancer_server/test_memory_balancer.py",
    "tests/balancer_server/test_feeds_memory.py",
    "tests/admin_api/test_memory_port.py",
]


def _mypy(*paths: str, cache: Path) -> subprocess.CompletedProcess[str]:
    require_module("mypy")
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(cache), "--no-error-summary", *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_both_adapters_implement_the_port(tmp_path: Path) -> None:
    result = _mypy(*CHECKED, cache=tmp_path / "cache")
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_adapter_that_lacks_a_method_fails_the_check(tmp_path: Path) -> None:
    # MemoryStore as it is but for one read it lost, and a store that has
    # the watcher's part of the port only: both are refused, so a missing
    # method cannot hide behind a port that mypy does not see.
    source = (ROOT / "lookaside_registry/memory.py").read_text()
    assert source.count("    async def events(") == 1
    (tmp_path / "drifted.py").write_text(
        source.replace("    async def events(", "    async def log(")
    )
    check = tmp_path / "check.py"
    check.write_text(
        "from drifted import MemoryStore\n"
        "from lookaside_registry.port import AdminPort, Registry, WatchPort\n"
        "\n"
        "def drifted(store: MemoryStore) -> AdminPort:\n"
        "    return store\n"
        "\n"
        "def narrow(store: WatchPort) -> Registry:\n"
        "    return store\n"
    )
    result = _mypy(str(check), cache=tmp_path / "cache")
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert 'check.py:5: error: Incompatible return value type (got "MemoryStore"' in out, out
    assert 'missing following "AdminPort" protocol member' in out and "    events" in out, out
    assert 'check.py:8: error: Incompatible return value type (got "WatchPort"' in out, out
