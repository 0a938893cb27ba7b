"""What the deploy tests read: the compose file as `docker-compose config`
resolves it, the Kubernetes manifests, and what each names (commands and
environment variables), checked against the package itself."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic_settings import BaseSettings

from lookaside.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
KUBERNETES_DIR = REPO / "deploy" / "kubernetes"
DOCKERFILE = REPO / "Dockerfile"
# Where compose (a volume) and Kubernetes (a Secret) put the certificates.
TLS_DIR = "/var/lib/lookaside/tls"
# Values for the secrets the compose file requires (`${VAR:?...}`).
SECRETS = {
    "LOOKASIDE_ADMIN_TOKEN": "compose-admin-token-9f8e7d6c5b4a",
    "LOOKASIDE_REGISTRATION_TOKEN": "compose-registration-token-1a2b3c4d",
}
# Settings that the registration contract adds (balancer and demo server
# flags, secrets from *_FILE variants). They are accepted here by name;
# once the package has them they are checked like every other field.
CONTRACT_VARIABLES = frozenset(
    {
        "LOOKASIDE_BALANCER_REGISTRATION_TOKEN",
        "LOOKASIDE_BALANCER_REGISTRATION_TOKEN_FILE",
        "LOOKASIDE_BALANCER_INSECURE_REGISTRATION",
        "LOOKASIDE_ROUTEGUIDE_REGISTRATION_TOKEN",
        "LOOKASIDE_ROUTEGUIDE_REGISTRATION_TOKEN_FILE",
        "LOOKASIDE_ADMIN_TOKEN_FILE",
    }
)
# Environment variables of `lookaside ctl` (read by lookaside/ctl.py).
CTL_VARIABLES = frozenset(
    {"LOOKASIDE_ADMIN_URL", "LOOKASIDE_ADMIN_TOKEN", "LOOKASIDE_ADMIN_TOKEN_FILE"}
)


def image_files() -> dict[str, str]:
    """Paths the Dockerfile copies into the image -> the repository's files."""
    out = {}
    for src, dst in re.findall(r"^COPY (?!--from)(\S+) (/\S+)$", DOCKERFILE.read_text(), re.M):
        out[dst] = str(REPO / src)
    return out


@functools.cache
def local_certs() -> str:
    """A folder with the files `lookaside certs` makes, standing in for TLS_DIR."""
    from lookaside.certs import issue

    folder = tempfile.mkdtemp(prefix="lookaside-deploy-certs-")
    issue(folder)
    return folder


def local_paths(value: str) -> str:
    """A deployment's paths -> files here: the image's, and the certificates."""
    for dst, src in image_files().items():
        value = value.replace(dst, src)
    return value.replace(TLS_DIR, local_certs())


def docker_compose() -> str | None:
    return shutil.which("docker-compose")


def compose_config(env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` of the repository's file (no engine needed)."""
    exe = docker_compose()
    assert exe, "docker-compose is not installed"
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOOKASIDE_")}
    return subprocess.run(
        [exe, "-f", str(COMPOSE_FILE), "-p", "lookaside", "config"],
        env={**base, **(env if env is not None else SECRETS)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def compose_services() -> dict[str, dict[str, Any]]:
    done = compose_config()
    assert done.returncode == 0, done.stderr
    services: dict[str, dict[str, Any]] = yaml.safe_load(done.stdout)["services"]
    return services


def kubernetes_documents() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(KUBERNETES_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out.extend((path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return out


@dataclass
class Process:
    """One `lookaside` process a deployment runs."""

    where: str  # "compose service backend" or "deployment.yaml Deployment/balancer"
    argv: list[str]  # after the `lookaside` entry point
    env: dict[str, str] = field(default_factory=dict)


def kubernetes_processes() -> list[Process]:
    out = []
    for path, doc in kubernetes_documents():
        spec = doc.get("spec", {})
        template = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get(
            "template"
        )
        if not template:
            continue
        for container in template["spec"]["containers"]:
            if container["image"] != "lookaside":
                continue
            env = {e["name"]: e.get("value", "<from valueFrom>") for e in container.get("env", [])}
            where = f"{path.name} {doc['kind']}/{doc['metadata']['name']}"
            out.append(Process(where, list(container.get("args", [])), env))
    return out


def compose_processes(services: dict[str, dict[str, Any]]) -> list[Process]:
    return [
        Process(
            f"compose service {name}",
            list(svc.get("command") or []),
            dict(svc.get("environment") or {}),
        )
        for name, svc in services.items()
        if svc.get("image", "").startswith("lookaside")
    ]


def _settings_classes() -> list[tuple[str, type[BaseSettings]]]:
    from admin_api.settings import AdminSettings
    from balancer_server.settings import BalancerSettings
    from dns_responder.settings import DnsSettings
    from lookaside.demo.settings import ClientSettings, ServerSettings

    classes: list[type[BaseSettings]] = [
        BalancerSettings,
        DnsSettings,
        AdminSettings,
        ServerSettings,
        ClientSettings,
    ]
    pairs = [(str(c.model_config.get("env_prefix", "")), c) for c in classes]
    return sorted(pairs, key=lambda p: -len(p[0]))  # the longest prefix wins


def settings_for(argv: list[str]) -> type[BaseSettings] | None:
    """The settings class a `lookaside` command reads, None for ctl and probes."""
    by_command = {
        ("balancer",): "LOOKASIDE_BALANCER_",
        ("dns",): "LOOKASIDE_DNS_",
        ("admin",): "LOOKASIDE_ADMIN_",
        ("routeguide", "server"): "LOOKASIDE_ROUTEGUIDE_",
        ("routeguide", "client"): "LOOKASIDE_ROUTEGUIDE_CLIENT_",
    }
    for command, prefix in by_command.items():
        if tuple(argv[: len(command)]) == command:
            return dict(_settings_classes())[prefix]
    return None


def known_variable(name: str) -> bool:
    """Whether the package reads `name` (some settings class's prefix +
    field), or the contracts add it."""
    for prefix, cls in _settings_classes():
        if name.startswith(prefix):
            return name[len(prefix) :].lower() in cls.model_fields
    return False


def problems(process: Process) -> list[str]:
    """What is wrong with one process: a command the CLI does not know,
    a variable no settings class reads, or values the settings refuse."""
    found = []
    try:
        build_parser().parse_args(process.argv)
    except SystemExit:
        return [f"{process.where}: `lookaside {' '.join(process.argv)}` does not parse"]
    cls = settings_for(process.argv)
    for name in process.env:
        if not name.startswith("LOOKASIDE_"):
            continue  # helpers such as POD_IP, used in $(POD_IP) substitutions
        if name in CONTRACT_VARIABLES and not known_variable(name):
            continue
        if cls is None:
            if name not in CTL_VARIABLES:
                found.append(
                    f"{process.where}: {name} is not read by `lookaside {process.argv[0]}`"
                )
            continue
        prefix = str(cls.model_config.get("env_prefix"))
        if not name.startswith(prefix) or not known_variable(name):
            found.append(f"{process.where}: {name} is not a setting of {cls.__name__} ({prefix}*)")
    if cls is not None and not found:
        found.extend(_values_problems(process, cls))
    return found


def _values_problems(process: Process, cls: type[BaseSettings]) -> list[str]:
    """Builds the settings the way the CLI does (flags over environment)."""
    from pydantic import ValidationError

    from server_common.settings import settings_from_args

    args = build_parser().parse_args(process.argv)
    env = {
        k: local_paths(v.replace("$(POD_IP)", "10.1.2.3").replace("$(POD_NAME)", "routeguide-abc"))
        for k, v in process.env.items()
        if k.startswith("LOOKASIDE_") and v != "<from valueFrom>"
    }
    if cls.__name__ == "AdminSettings":
        env.setdefault("LOOKASIDE_ADMIN_TOKEN", SECRETS["LOOKASIDE_ADMIN_TOKEN"])
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        settings_from_args(cls, args)
    except ValidationError as exc:
        return [f"{process.where}: {cls.__name__} refuses its settings: {exc}"]
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return []
