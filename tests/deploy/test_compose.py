"""docker-compose.yml, checked without a Docker engine: Debian's
docker-compose parses and resolves it, and every service is one that comes
up right whatever the start order."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.manifest import (
    SECRETS,
    compose_config,
    compose_processes,
    compose_services,
    problems,
)
from tests.support import require_tool


@pytest.fixture(autouse=True)
def _needs_docker_compose() -> None:
    require_tool("docker-compose", "Debian's docker-compose: apt-get install -y docker-compose")


LONG_RUNNING = ("redis", "balancer-1", "balancer-2", "dns", "admin", "backend", "backend-faulty")


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return compose_services()


def test_config_parses_and_has_the_topology(services: dict[str, dict[str, Any]]) -> None:
    assert set(LONG_RUNNING) | {"setup", "firehose", "stock-client"} <= set(services)
    assert services["backend"]["deploy"]["replicas"] == 2  # + backend-faulty = 3
    assert "--fault-percent" in services["backend-faulty"]["command"]
    assert services["stock-client"]["environment"]["LOOKASIDE_ROUTEGUIDE_CLIENT_LB"] == "grpclb-dns"
    assert services["firehose"]["environment"]["LOOKASIDE_ROUTEGUIDE_CLIENT_LB"] == "lookaside"


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_secrets_must_be_set(missing: str) -> None:
    env = {k: v for k, v in SECRETS.items() if k != missing}
    done = compose_config(env)
    assert done.returncode != 0
    assert missing in done.stderr


def test_redis_persists_append_only(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.get("target") == "/data" for v in _volumes(redis))


def _volumes(svc: dict[str, Any]) -> list[Any]:
    out = []
    for v in svc.get("volumes", []):
        if isinstance(v, str):  # source:target[:mode]
            parts = v.split(":")
            v = {"source": parts[0], "target": parts[1] if len(parts) > 1 else parts[0]}
        out.append(v)
    return out


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_services_heal(services: dict[str, dict[str, Any]], name: str) -> None:
    svc = services[name]
    check = svc["healthcheck"]
    assert check["test"][0] == "CMD" and check.get("start_period"), check
    assert svc["restart"] in ("unless-stopped", "always")


def test_dependencies_wait_for_health(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for dep, how in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            checked = services[dep].get("healthcheck", {}).get("test", ["NONE"]) != ["NONE"]
            wanted = "service_healthy" if checked else "service_completed_successfully"
            assert how["condition"] == wanted, f"{name} -> {dep}: {how}"
    assert "setup" in services["backend"]["depends_on"]
    assert {"balancer-1", "balancer-2"} <= set(services["dns"]["depends_on"])


def test_backends_scale(services: dict[str, dict[str, Any]]) -> None:
    """`--scale backend=5` needs no fixed name or host port, and each replica
    registers the address the balancer sees (its own container's)."""
    for name in ("backend", "backend-faulty"):
        svc = services[name]
        assert "container_name" not in svc and not svc.get("ports"), name
        env = svc["environment"]
        assert env["LOOKASIDE_ROUTEGUIDE_ADVERTISE_HOST"] == ""
        assert env["LOOKASIDE_ROUTEGUIDE_BALANCER"] == "balancer-1:50051,balancer-2:50051"


def test_commands_and_variables_exist(services: dict[str, dict[str, Any]]) -> None:
    found = [p for process in compose_processes(services) for p in problems(process)]
    assert not found, "\n".join(found)


def test_the_check_catches_a_wrong_name(services: dict[str, dict[str, Any]]) -> None:
    [process] = [p for p in compose_processes(services) if p.where.endswith(" backend")]
    process.env["LOOKASIDE_ROUTEGUIDE_FAULT_PERCENTS"] = "0.2"
    assert problems(process)
    process.env.pop("LOOKASIDE_ROUTEGUIDE_FAULT_PERCENTS")
    process.argv.append("--no-such-flag")
    assert problems(process)


TLS = "/var/lib/lookaside/tls"


def test_it_runs_the_production_profile(services: dict[str, dict[str, Any]]) -> None:
    """docs/security.md's profile: TLS on every gRPC port and the admin API,
    health checks over TLS to the backends, the pool's own registration
    token (no global token, no insecure switch), health checks and outlier
    detection on, Redis append-only (test_redis_persists_append_only)."""
    import json

    from tests.deploy.manifest import REPO

    for name in ("balancer-1", "balancer-2"):
        env = services[name]["environment"]
        assert env["LOOKASIDE_BALANCER_TLS_CERT"].startswith(TLS), name
        assert env["LOOKASIDE_BALANCER_BACKEND_TLS_CA"] == f"{TLS}/ca.pem"
        assert "{pool}" in env["LOOKASIDE_BALANCER_BACKEND_TLS_SERVER_NAME"]
        assert "LOOKASIDE_BALANCER_REGISTRATION_TOKEN" not in env
        assert "LOOKASIDE_BALANCER_INSECURE_REGISTRATION" not in env
        policy = json.loads((REPO / "deploy/compose/registration-policy.json").read_text())
        for rule in policy["pools"].values():
            for variable in rule["token_env"]:
                assert env[variable] == SECRETS["LOOKASIDE_REGISTRATION_TOKEN"]
        assert env["LOOKASIDE_BALANCER_REGISTRATION_POLICY"] == (
            "/etc/lookaside/registration-policy.json"
        )
    for name in ("backend", "backend-faulty"):
        env = services[name]["environment"]
        assert env["LOOKASIDE_ROUTEGUIDE_TLS_CERT"].startswith(TLS)
        assert env["LOOKASIDE_ROUTEGUIDE_BALANCER_TLS_CA"] == f"{TLS}/ca.pem"
    assert services["admin"]["environment"]["LOOKASIDE_ADMIN_TLS_CERT"].startswith(TLS)
    assert services["dns"]["environment"]["LOOKASIDE_DNS_METRICS_TLS_CERT"].startswith(TLS)
    assert services["setup"]["environment"]["LOOKASIDE_ADMIN_URL"].startswith("https://")
    for name in ("firehose", "stock-client"):
        assert (
            services[name]["environment"]["LOOKASIDE_ROUTEGUIDE_CLIENT_TLS_CA"] == f"{TLS}/ca.pem"
        )
    # Every gRPC and HTTP health check speaks TLS.
    for name in ("balancer-1", "balancer-2", "backend", "backend-faulty", "admin", "dns"):
        test = services[name]["healthcheck"]["test"]
        assert "--tls-ca" in test, (name, test)
    pools = json.loads((REPO / "deploy/compose/pools.json").read_text())["pools"]
    for pool in pools:
        assert pool["config"]["health_checks"]["enabled"]
        assert pool["config"]["outlier_detection"]["enabled"]
    assert services["certs"]["command"][:2] == ["certs", "--out"]


def test_balancers_run_a_set_number_of_workers(services: dict[str, dict[str, Any]]) -> None:
    """Each balancer container runs a fixed number of workers: left to the
    default (the host's cores), two replicas on one host would each start
    one per core of the host."""
    for name in ("balancer-1", "balancer-2"):
        workers = services[name]["environment"]["LOOKASIDE_BALANCER_WORKERS"]
        assert 1 <= int(workers) <= 4, name
