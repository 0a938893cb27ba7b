"""`lookaside admin` as a real process: it refuses weak tokens, prints a
generated one in dev mode, serves, and stops cleanly on SIGTERM."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx

from tests.admin_api.conftest import TOKEN
from tests.admin_api.process import REPO, AdminProcess, clean_env


def test_refuses_a_default_token(redis_url: str) -> None:
    # The error names what gave the token: the flag, or (none given) the
    # flag and its variable.
    cases = ((["--token", "changethis"], "--token: "), ([], "LOOKASIDE_ADMIN_TOKEN"))
    for args, named in cases:
        result = subprocess.run(
            [sys.executable, "-m", "lookaside", "admin", "--redis-url", redis_url, *args],
            cwd=REPO,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0
        assert named in result.stderr
        assert "--dev" in result.stderr


def test_serves_and_stops_on_sigterm(redis_url: str, pool_name: str) -> None:
    admin = AdminProcess(redis_url, env=clean_env(LOOKASIDE_ADMIN_TOKEN=TOKEN)).wait_ready()
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = httpx.post(f"{admin.url}/api/v1/pools", json={"name": pool_name}, headers=auth)
        assert r.status_code == 201
        assert httpx.get(f"{admin.url}/readyz").status_code == 200
        assert httpx.get(f"{admin.url}/api/v1/pools/{pool_name}").status_code == 401
    finally:
        code, _out, err = admin.stop()
    assert code == 0, err
    assert "admin stopped" in err


def test_dev_mode_prints_a_generated_token(redis_url: str) -> None:
    admin = AdminProcess(redis_url, "--dev").wait_ready()
    code, _out, err = admin.stop()
    assert code == 0, err
    match = re.search(r"generated token: (\S+)", err)
    assert match, err
    assert len(match.group(1)) >= 32
