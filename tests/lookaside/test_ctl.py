"""`lookaside ctl` against a real `lookaside admin` process, a real Redis
and backends registered through a real balancer."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lookaside.cli import main
from lookaside_registry.machine import Event, Outcome
from tests.admin_api.conftest import TOKEN
from tests.admin_api.process import REPO, AdminProcess, clean_env
from tests.support import BalancerHandle, RouteGuideBackend, register_all, start_backends

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def admin(redis_url: str) -> Iterator[AdminProcess]:
    process = AdminProcess(redis_url, env=clean_env(LOOKASIDE_ADMIN_TOKEN=TOKEN)).wait_ready()
    yield process
    process.stop()


@pytest.fixture
def lab(
    admin: AdminProcess,
    balancer: BalancerHandle,
    backends: list[RouteGuideBackend],
    pool_name: str,
) -> dict[int, str]:
    r = httpx.post(f"{admin.url}/api/v1/pools", json={"name": pool_name}, headers=AUTH)
    assert r.status_code == 201, r.text
    return register_all(balancer, pool_name, start_backends(backends, 3))


def ctl(
    admin: AdminProcess, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["ctl", *argv[:1], "--url", admin.url, "--token", TOKEN, *argv[1:]])
    out, err = capsys.readouterr()
    return code, out, err


def backend_json(admin: AdminProcess, pool: str, backend: str) -> dict[str, object]:
    r = httpx.get(f"{admin.url}/api/v1/pools/{pool}/backends/{backend}", headers=AUTH)
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def test_pools_table_and_json(
    admin: AdminProcess, lab: dict[int, str], pool_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = ctl(admin, capsys, "pools")
    assert code == 0
    head, *rows = out.splitlines()
    assert head.split()[:3] == ["POOL", "POLICY", "BACKENDS"]
    [row] = [r.split() for r in rows if r.split()[0] == pool_name]
    assert row[1:4] == ["round_robin", "3", "3"]
    code, out, _ = ctl(admin, capsys, "pools", "-o", "json")
    [pool] = [p for p in json.loads(out)["pools"] if p["name"] == pool_name]
    assert pool["backends"]["serving"] == 3


def test_pools_count_backends_the_panic_guard_holds_as_held(
    admin: AdminProcess,
    balancer: BalancerHandle,
    backends: list[RouteGuideBackend],
    pool_name: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    body = {"name": pool_name, "health_checks": {"enabled": False}}
    r = httpx.post(f"{admin.url}/api/v1/pools", json=body, headers=AUTH)
    assert r.status_code == 201, r.text
    ids = list(register_all(balancer, pool_name, start_backends(backends, 3)).values())
    outcomes = [
        balancer.run(balancer.store.step(pool_name, bid, Event.HEALTH_FAIL, actor="health",
                                         detail="Check UNAVAILABLE", max_share=0.5)).outcome
        for bid in ids[:2]
    ]  # fmt: skip
    assert outcomes == [Outcome.CHANGED, Outcome.HELD]
    code, out, _ = ctl(admin, capsys, "pools")
    assert code == 0
    head, *rows = out.splitlines()
    assert head.split()[3:7] == ["SERVING", "HELD", "DRAINING", "DISABLED"]
    [row] = [r.split() for r in rows if r.split()[0] == pool_name]
    assert row[2:8] == ["3", "1", "1", "0", "0", "1"]  # backends, serving, held, ..., out
    held = backend_json(admin, pool_name, ids[1])
    assert held["state"] == "serving" and held["held"] is True
    assert held["held_for"] == "health_fail"


def test_backends_show_unknown_load_as_a_dash(
    admin: AdminProcess, lab: dict[int, str], pool_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = ctl(admin, capsys, "backends", pool_name)
    assert code == 0
    rows = out.splitlines()[1:]
    assert sorted(r.split()[0] for r in rows) == sorted(lab.values())
    for port in lab:
        [row] = [r for r in rows if f"127.0.0.1:{port}" in r]
        assert row.split()[2] == "serving"
        assert "—" in row  # no heartbeat load yet: unknown, not 0 or -100%


def test_transitions_change_the_registry(
    admin: AdminProcess, lab: dict[int, str], pool_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = next(iter(lab.values()))
    code, out, _ = ctl(admin, capsys, "drain", pool_name, backend)
    assert code == 0 and "draining" in out
    assert backend_json(admin, pool_name, backend)["state"] == "draining"
    assert ctl(admin, capsys, "undrain", pool_name, backend)[0] == 0
    assert ctl(admin, capsys, "disable", pool_name, backend)[0] == 0
    assert backend_json(admin, pool_name, backend)["state"] == "disabled"
    assert ctl(admin, capsys, "enable", pool_name, backend)[0] == 0
    code, out, _ = ctl(admin, capsys, "weight", pool_name, backend, "7", "-o", "json")
    assert code == 0 and json.loads(out)["weight"] == 7
    assert backend_json(admin, pool_name, backend)["weight"] == 7
    code, out, _ = ctl(admin, capsys, "events", pool_name, "--limit", "10")
    kinds = [line.split()[1] for line in out.splitlines()[1:]]
    assert {"drained", "undrained", "weight_changed"} <= set(kinds), out


def test_subset_sets_the_pools_subset_size_and_pools_shows_it(
    admin: AdminProcess, lab: dict[int, str], pool_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = ctl(admin, capsys, "subset", pool_name, "2")
    assert code == 0 and "gets 2 of the pool's backends" in out
    code, out, _ = ctl(admin, capsys, "pools")
    head, *rows = out.splitlines()
    [row] = [r.split() for r in rows if r.split()[0] == pool_name]
    assert row[head.split().index("SUBSET")] == "2"
    code, _, err = ctl(admin, capsys, "subset", pool_name, "1001")
    assert code == 1 and "HTTP 422" in err and "subset_size" in err
    code, out, _ = ctl(admin, capsys, "subset", pool_name, "0")
    assert code == 0 and "every backend" in out
    r = httpx.get(f"{admin.url}/api/v1/pools/{pool_name}", headers=AUTH)
    assert r.json()["subset_size"] == 0


def test_refusals_are_precise(
    admin: AdminProcess, lab: dict[int, str], pool_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = ctl(admin, capsys, "drain", pool_name, "nosuchbackend")
    assert code == 1 and "HTTP 404" in err and "nosuchbackend" in err
    backend = next(iter(lab.values()))
    code, _, err = ctl(admin, capsys, "weight", pool_name, backend, "0")
    assert code == 1 and "HTTP 422" in err and "weight" in err
    capsys.readouterr()
    code = main(["ctl", "pools", "--url", admin.url, "--token", "wrong-token-0123456789abcdef"])
    assert code == 1 and "HTTP 401" in capsys.readouterr().err
    code = main(["ctl", "pools", "--url", "http://127.0.0.1:9", "--token", TOKEN])
    assert code == 2 and "cannot reach the admin API" in capsys.readouterr().err


def test_apply_is_idempotent(
    admin: AdminProcess, tmp_path: Path, pool_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = {
        "pools": [
            {
                "name": pool_name,
                "config": {"report_interval_ms": 3000},
                "static_backends": [],
                "holds": [],
            }
        ]
    }
    path = tmp_path / "pools.json"
    path.write_text(json.dumps(doc))
    code, out, err = ctl(admin, capsys, "apply", "-f", str(path))
    assert code == 0, err
    assert f"changed  pool {pool_name}: report_interval_ms: 10000 -> 3000" in out
    code, out, err = ctl(admin, capsys, "apply", "-f", str(path))
    assert code == 0, err
    assert out.startswith("nothing to change")
    r = httpx.get(f"{admin.url}/api/v1/pools/{pool_name}", headers=AUTH)
    assert r.json()["report_interval_ms"] == 3000
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"pools": [{"name": pool_name, "config": {"report_interval_ms": "soon"}}]})
    )
    code, _, err = ctl(admin, capsys, "apply", "-f", str(bad))
    assert code == 1 and "report_interval_ms" in err


def test_export_round_trips(
    admin: AdminProcess, lab: dict[int, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = ctl(admin, capsys, "export")
    assert code == 0, err
    path = tmp_path / "state.json"
    path.write_text(out)
    code, _, err = ctl(admin, capsys, "apply", "-f", str(path))
    assert code == 0, err


def test_url_and_token_from_the_environment(
    admin: AdminProcess, lab: dict[int, str], pool_name: str
) -> None:
    env = clean_env(LOOKASIDE_ADMIN_URL=admin.url, LOOKASIDE_ADMIN_TOKEN=TOKEN)
    done = subprocess.run(
        [sys.executable, "-m", "lookaside", "ctl", "backends", pool_name, "-o", "json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["backends"]) == 3


def test_load_shows_every_window(
    admin: AdminProcess, lab: dict[int, str], pool_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = ctl(admin, capsys, "load", pool_name)
    assert code == 0, err
    windows = [line.split()[0] for line in out.splitlines()[1:4]]
    assert windows == ["10s", "1m", "15m"]
    assert "client streams: 0" in out
    assert sum(f"127.0.0.1:{port}" in out for port in lab) == 3


def test_apply_merges_and_dry_run_shows_the_plan(
    admin: AdminProcess, tmp_path: Path, pool_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    full = tmp_path / "full.json"
    full.write_text(
        json.dumps(
            {"pools": [{"name": pool_name, "config": {"policy": "least_loaded",
                                                      "report_interval_ms": 5000}}]}
        )
    )  # fmt: skip
    assert ctl(admin, capsys, "apply", "-f", str(full))[0] == 0
    partial = tmp_path / "drops.yaml"
    partial.write_text(
        f"pools: [{{name: {pool_name}, config: {{drops: [{{token: lb, per_mille: 20}}]}}}}]"
    )
    code, out, err = ctl(admin, capsys, "apply", "-f", str(partial), "--dry-run")
    assert code == 0, err
    assert f'would change  pool {pool_name}: drops: [] -> [{{"token":"lb","per_mille":20}}]' in out
    assert "dry run: nothing was written" in out
    r = httpx.get(f"{admin.url}/api/v1/pools/{pool_name}", headers=AUTH)
    assert r.json()["drops"] == []
    code, out, err = ctl(admin, capsys, "apply", "-f", str(partial))
    assert code == 0, err
    assert out.splitlines() == [
        f'changed  pool {pool_name}: drops: [] -> [{{"token":"lb","per_mille":20}}]'
    ]
    pool = httpx.get(f"{admin.url}/api/v1/pools/{pool_name}", headers=AUTH).json()
    assert (pool["policy"], pool["report_interval_ms"]) == ("least_loaded", 5000)  # kept
    code, out, err = ctl(admin, capsys, "apply", "-f", str(partial), "--prune")
    assert code == 0, err
    assert f"changed  pool {pool_name}: policy: least_loaded -> round_robin" in out


def test_no_admin_url_and_no_context_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], context_file: str
) -> None:
    assert main(["ctl", "pools"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lookaside ctl: no admin API given: pass --url (env LOOKASIDE_ADMIN_URL)")
    assert context_file in err and len(err.strip().splitlines()) == 1


def test_the_context_gives_url_and_token_only_to_its_own_url(
    admin: AdminProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lookaside import context

    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    context.save(context.Context(admin_url=admin.url, token_file=str(token_file)))
    capsys.readouterr()
    assert main(["ctl", "pools", "-o", "json"]) == 0
    assert "pools" in json.loads(capsys.readouterr().out)
    # The same URL without its scheme still uses the context's token.
    assert main(["ctl", "pools", "--url", admin.url.removeprefix("http://")]) == 0
    capsys.readouterr()
    # Another URL given: the context's token is not sent there.
    other = admin.url.replace("127.0.0.1", "localhost")
    assert main(["ctl", "pools", "--url", other]) == 1
    assert "HTTP 401" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--token-file", "/nonexistent"], "--token-file '/nonexistent' cannot be read"),
        (["--url", "ftp://127.0.0.1:1"], "--url 'ftp://127.0.0.1:1' is not an http(s) URL"),
        (["--url", "127.0.0.1:99999"], "--url 'http://127.0.0.1:99999' is not a URL"),
        (["--ca", "/nonexistent.pem"], "--ca '/nonexistent.pem' is not a readable CA file"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ctl", "pools", "--url", "http://127.0.0.1:9", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_usage_errors_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["ctl", "weight", "pool", "backend", "heavy"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid int value: 'heavy'" in err and len(err.strip().splitlines()) == 1


def test_https_admin_with_ca_and_a_url_without_scheme(
    redis_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lookaside.certs import issue
    from tests.support import wait_until

    certs = issue(tmp_path / "certs")
    process = AdminProcess(
        redis_url,
        "--tls-cert",
        str(certs.server_cert),
        "--tls-key",
        str(certs.server_key),
        env=clean_env(LOOKASIDE_ADMIN_TOKEN=TOKEN),
    )
    bare = f"127.0.0.1:{process.port}"

    def up() -> bool:
        try:
            return (
                httpx.get(
                    f"https://{bare}/healthz",
                    verify=ssl.create_default_context(cafile=str(certs.ca)),
                ).status_code
                == 200
            )
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, timeout=30)
        monkeypatch.setenv("LOOKASIDE_ADMIN_TOKEN", TOKEN)
        capsys.readouterr()
        assert main(["ctl", "pools", "--url", bare, "--ca", str(certs.ca)]) == 0
        assert capsys.readouterr().out.startswith("POOL")
        assert main(["ctl", "pools", "--url", f"https://{bare}"]) == 2
        err = capsys.readouterr().err
        assert "give its CA with --ca (env LOOKASIDE_ADMIN_CA)" in err
        assert len(err.strip().splitlines()) == 1
    finally:
        process.stop()


def test_streams_show_grpclb_and_xds_with_their_versions(
    admin: AdminProcess,
    balancer: BalancerHandle,
    lab: dict[int, str],
    pool_name: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.support import LbStream, wait_until

    eds = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
    table = balancer.server.xds_streams

    async def ads_events() -> None:  # as the ADS service reports them, on its loop
        table.opened("ctl-1", "ipv4:127.0.0.1:5599", "node-ctl")
        table.acked("ctl-1", eds, "5")
        table.nacked("ctl-1", eds, "5", "endpoint weight 0 is not allowed")

    grpclb = LbStream(balancer.address, pool_name)
    try:
        grpclb.next_list()
        balancer.run(ads_events())

        def shown() -> bool:
            _, out, _ = ctl(admin, capsys, "streams")
            return "node-ctl" in out and pool_name in out

        wait_until(shown)
        code, out, _ = ctl(admin, capsys, "streams")
    finally:
        grpclb.close()
    assert code == 0
    [pool_row] = [r.split() for r in out.splitlines() if r.startswith(pool_name)]
    assert pool_row == [pool_name, "1"]
    [row] = [r.split() for r in out.splitlines() if "node-ctl" in r]
    assert row[1] == "ctl-1" and row[5:9] == ["EDS", "5", "5", "NACKING"]
    assert "endpoint weight 0" in out
    code, out, _ = ctl(admin, capsys, "streams", "-o", "json")
    body = json.loads(out)
    assert body["xds"]["streams_total"] >= 1
