"""docker-compose.yml, checked statically (no Docker engine runs here):
every service runs a real `lookaside` command, and every environment
variable is one that command's settings read, with a value they accept."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from lookaside.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def settings_for(command: list[str]) -> type:
    from admin_api.settings import AdminSettings
    from lookaside.demo.settings import ServerSettings
    from lookaside.dns_responder.settings import DnsSettings
    from lookaside.settings import BalancerSettings

    return {
        "balancer": BalancerSettings,
        "dns": DnsSettings,
        "admin": AdminSettings,
        "routeguide": ServerSettings,
    }[command[0]]


BUILT = {name: svc for name, svc in COMPOSE["services"].items() if "build" in svc}


def test_topology_has_every_component() -> None:
    assert set(COMPOSE["services"]) >= {"redis", "balancer", "dns", "admin", "routeguide"}
    assert COMPOSE["services"]["routeguide"]["deploy"]["replicas"] == 3


@pytest.mark.parametrize("name", sorted(BUILT))
def test_service_runs_a_real_command_with_valid_settings(name: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    svc = BUILT[name]
    args = build_parser().parse_args(svc["command"])
    assert callable(args.func)
    model = settings_for(svc["command"])
    prefix = model.model_config["env_prefix"]
    for key, value in svc["environment"].items():
        assert key.startswith(prefix), f"{name}: {key} is not a {prefix} variable"
        assert key[len(prefix) :].lower() in model.model_fields, f"{name}: {key} is read by nothing"
        # ${VAR:?...} is filled in by compose; give it a plausible value here.
        monkeypatch.setenv(
            key, re.sub(r"\$\{[^}]+\}", "a-long-random-token-0123456789abcdef", str(value))
        )
    model()  # raises if a value is refused


def test_dockerfile_installs_every_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("lookaside", "balancer_server", "client_lib", "admin_api", "protos"):
        assert f"COPY {package} ./{package}" in dockerfile
    assert 'ENTRYPOINT ["lookaside"]' in dockerfile
