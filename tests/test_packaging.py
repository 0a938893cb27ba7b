"""The install: pyproject.toml builds without a setuptools warning under a
distribution name that is not another PyPI project's; `make up` installs
only the server extras and says where the `lookaside` command is, `make
test` adds the dev tools."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
import venv
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_pyproject_applies_without_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(REPO)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dist = apply_configuration(Distribution(), REPO / "pyproject.toml")
    # "lookaside" on PyPI is an unrelated project: `pip install lookaside` would bring it.
    assert dist.get_name() == "lookaside-grpclb"
    assert dist.entry_points["console_scripts"] == ["lookaside = lookaside.cli:main"]


def test_the_readme_installs_this_distribution() -> None:
    readme = (REPO / "README.md").read_text()
    name = PYPROJECT["project"]["name"]
    assert f"pip install {name}" in readme and f"pip install '{name}[server]'" in readme
    assert "pip install lookaside " not in readme and "'lookaside[" not in readme


def _make_n(target: str, tmp_path: Path) -> list[str]:
    """The commands `make TARGET` runs on a fresh clone (no venv yet), not run."""
    # Run as a make of its own, also when the suite runs under `make test`
    # (a sub-make would print its directory changes among the commands).
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", target, f"VENV={tmp_path / 'venv'}"],
        cwd=REPO, capture_output=True, text=True, timeout=30, check=True, env=env,
    )  # fmt: skip
    return done.stdout.splitlines()


def test_make_up_installs_only_the_server_extras(tmp_path: Path) -> None:
    lines = _make_n("up", tmp_path)
    installs = [line for line in lines if " -e '." in line]
    assert len(installs) == 1 and installs[0].endswith("-e '.[server,redis-server]'"), lines
    assert all("dev" not in ln and "test-tools" not in ln for ln in lines), lines
    lookaside = f"{tmp_path / 'venv'}/bin/lookaside"
    assert any(ln.startswith("echo") and f"{lookaside} ctl pools" in ln for ln in lines), lines
    assert lines[-1] == f"{lookaside} up"


def test_make_test_installs_the_dev_tools_and_the_test_tools(tmp_path: Path) -> None:
    lines = _make_n("test", tmp_path)
    assert any(ln.endswith("-e '.[server,dev,redis-server]'") for ln in lines), lines
    assert any(".ci/test-tools" in ln for ln in lines), lines
    assert lines[-1].startswith(f"{tmp_path / 'venv'}/bin/python -m pytest")


@pytest.mark.timeout(600)
def test_an_editable_install_prints_no_setuptools_warning(tmp_path: Path) -> None:
    """What `make install` does, without the dependencies: a fresh venv and
    `pip install -e` of a copy of the checkout, verbose, so that any warning
    of the build backend shows."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "lookaside", "balancer_server", "client_lib",
                 "admin_api"):  # fmt: skip
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, src / name)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    done = subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-v", "--no-deps",
         "--disable-pip-version-check", "-e", str(src)],
        capture_output=True, text=True, timeout=500, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    # pip's own "WARNING: Location ..." lines come from this machine's pip
    # configuration, not from the project.
    warnings_seen = sorted(set(re.findall(r"\b(?:\w+Warning|InformationOnly)\b: .*", out)))
    assert not warnings_seen, warnings_seen
    assert re.search(r"Successfully installed lookaside-grpclb-", out), out[-2000:]
