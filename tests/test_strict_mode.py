"""CI's strict mode: under LOOKASIDE_STRICT=1 (set by .ci/run) a test whose
tool is missing fails instead of skipping, `make tools` fails instead of
warning, and no test skips by itself around tests/support.py's helpers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import STRICT_ENV, require_module, require_tool

REPO = Path(__file__).resolve().parents[1]
ABSENT = "lookaside-no-such-tool"


@pytest.mark.parametrize("value", ["", "0"])
def test_a_missing_tool_skips_outside_strict_mode(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(STRICT_ENV, value)
    with pytest.raises(pytest.skip.Exception, match=f"needs {ABSENT}"):
        require_tool(ABSENT)
    with pytest.raises(pytest.skip.Exception, match="needs the Python module"):
        require_module("lookaside_no_such_module")


def test_a_missing_tool_fails_in_strict_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STRICT_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=f"needs {ABSENT}.*{STRICT_ENV}=1"):
        require_tool(ABSENT)
    with pytest.raises(pytest.fail.Exception, match=f"lookaside_no_such_module.*{STRICT_ENV}=1"):
        require_module("lookaside_no_such_module")


def test_a_present_tool_is_found_on_path_or_next_to_the_interpreter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(STRICT_ENV, "1")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert require_tool(Path(sys.executable).name) == str(
        Path(sys.executable).parent / Path(sys.executable).name
    )
    assert require_module("json").__name__ == "json"


def test_ci_runs_strict() -> None:
    run = (REPO / ".ci" / "run").read_text()
    assert re.search(rf"^export {STRICT_ENV}=1$", run, re.M), run
    assert run.index(f"export {STRICT_ENV}=1") < run.index("make test")


# A test that skips itself when something is missing hides a check that did
# not run: it calls require_tool / require_module / missing_tool instead.
SELF_SKIP = re.compile(r"pytest\.(skip\(|importorskip|mark\.skip)")


def test_no_test_skips_by_itself() -> None:
    found = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        if path.name in ("support.py", Path(__file__).name):
            continue
        rel = path.relative_to(REPO).as_posix()
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if SELF_SKIP.search(line):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


def _test_tools(tmp_path: Path, strict: str) -> subprocess.CompletedProcess[str]:
    """.ci/test-tools on a machine with none of the tools and no apt-get:
    only bash, id and tr on PATH, an empty venv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "id", "tr"):
        found = subprocess.run(["which", tool], capture_output=True, text=True, check=True)
        (bin_dir / tool).symlink_to(found.stdout.strip())
    env = {"PATH": str(bin_dir), "VENV": str(tmp_path / "venv"), STRICT_ENV: strict,
           "GOCODE": str(tmp_path / "no-gocode")}  # fmt: skip
    return subprocess.run(
        [str(bin_dir / "bash"), str(REPO / ".ci" / "test-tools")],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_make_tools_fails_loudly_in_strict_mode(tmp_path: Path) -> None:
    done = _test_tools(tmp_path, "1")
    assert done.returncode == 1, done.stderr
    for name in ("chromium", "docker-compose", "golang-go", "golang-google-grpc-dev",
                 "protobuf-compiler", "protoc-gen-go-grpc", "golang-github-golang-protobuf-1-5-dev",
                 "hadolint", "kubernetes_validate"):  # fmt: skip
        assert name in done.stderr and "error:" in done.stderr, (name, done.stderr)


def test_make_tools_warns_outside_strict_mode(tmp_path: Path) -> None:
    done = _test_tools(tmp_path, "")
    assert done.returncode == 0, done.stderr
    assert "warning:" in done.stderr and "chromium" in done.stderr
    assert "error:" not in done.stderr
