"""deploy/kubernetes/, checked without a cluster: every manifest validates
against the Kubernetes schemas, and the pieces of the article's setup are
there and name only commands and settings the package has."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import yaml

from lookaside.cli import build_parser
from tests.deploy.manifest import (
    KUBERNETES_DIR,
    TLS_DIR,
    kubernetes_documents,
    kubernetes_processes,
    problems,
)
from tests.support import require_module

K8S_VERSION = "1.30.0"


@pytest.fixture(scope="module")
def kubernetes_validate() -> Any:
    return require_module("kubernetes_validate", "kubernetes-validate: pip install -e '.[dev]'")


def _docs() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for _, d in kubernetes_documents()}


def test_every_manifest_validates(kubernetes_validate: Any) -> None:
    docs = kubernetes_documents()
    assert len(docs) >= 10
    for _path, doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_a_broken_manifest_is_caught(kubernetes_validate: Any) -> None:
    doc = _docs()[("Deployment", "balancer")]
    broken = yaml.safe_load(yaml.safe_dump(doc))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_kustomization_lists_every_file() -> None:
    kustomization = yaml.safe_load((KUBERNETES_DIR / "kustomization.yaml").read_text())
    files = {p.name for p in KUBERNETES_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_balancer_is_two_replicas_probed_over_grpc_health() -> None:
    docs = _docs()
    deployment = docs[("Deployment", "balancer")]
    assert deployment["spec"]["replicas"] == 2
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        # Kubernetes' own gRPC probe has no TLS: the CLI's probe, over TLS.
        command = container[probe]["exec"]["command"]
        assert command[:3] == ["lookaside", "health-probe", "127.0.0.1:50051"]
        assert command[3:] == ["--tls-ca", f"{TLS_DIR}/ca.pem"]
        build_parser().parse_args(command[1:])
    pdb = docs[("PodDisruptionBudget", "balancer")]
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert pdb["spec"]["minAvailable"] == 1


def test_balancer_workers_follow_the_cpu_request() -> None:
    """One worker per requested core (rounded up), never the node's cores;
    the pod's stop grace covers the balancer's grace and its workers' last
    flush (balancer_server.workers.STOP_MARGIN)."""
    from balancer_server.settings import BalancerSettings
    from balancer_server.workers import STOP_MARGIN

    deployment = _docs()[("Deployment", "balancer")]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    source = env["LOOKASIDE_BALANCER_WORKERS"]["valueFrom"]["resourceFieldRef"]
    assert source == {"resource": "requests.cpu", "divisor": "1"}
    assert "cpu" in container["resources"]["requests"]
    grace = BalancerSettings.model_fields["grace"].default
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= (
        grace + STOP_MARGIN
    )


def test_stock_clients_find_the_balancers_through_cluster_dns() -> None:
    """A Service named for the pool, with a port named grpclb that selects
    the balancer pods: cluster DNS publishes _grpclb._tcp.<pool> SRV records."""
    docs = _docs()
    service = docs[("Service", "routeguide")]
    [port] = service["spec"]["ports"]
    assert port["name"] == "grpclb" and port.get("protocol", "TCP") == "TCP"
    balancer_labels = docs[("Deployment", "balancer")]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= balancer_labels.items()


def test_backends_register_their_pod_ip() -> None:
    [container] = _docs()[("Deployment", "routeguide")]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["LOOKASIDE_ROUTEGUIDE_ADVERTISE_HOST"]["value"] == "$(POD_IP)"


def test_secrets_come_from_a_secret() -> None:
    refs = Counter()
    for _, doc in kubernetes_documents():
        for container in (
            doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
        ):
            for e in container.get("env", []):
                if "TOKEN" in e["name"]:
                    assert "value" not in e, f"{e['name']} is written in the manifest"
                    refs[e["valueFrom"]["secretKeyRef"]["name"]] += 1
    assert set(refs) == {"lookaside-tokens"}


def test_commands_and_variables_exist() -> None:
    processes = kubernetes_processes()
    assert {p.argv[0] for p in processes} >= {"balancer", "admin", "routeguide", "ctl"}
    found = [p for process in processes for p in problems(process)]
    assert not found, "\n".join(found)


def _containers() -> dict[str, dict[str, Any]]:
    out = {}
    for _, doc in kubernetes_documents():
        spec = doc.get("spec", {})
        template = spec.get("template") or {}
        for container in template.get("spec", {}).get("containers", []):
            if container["image"] == "lookaside":
                out[f"{doc['kind']}/{doc['metadata']['name']}"] = {
                    **container,
                    "_volumes": template["spec"].get("volumes", []),
                }
    return out


def test_it_runs_the_production_profile() -> None:
    """docs/security.md's profile: TLS on every gRPC port and the admin API
    (certificates from the Secret lookaside-tls), health checks over TLS to
    the backends, the pool's own registration token, no insecure switch."""
    containers = _containers()
    for where, container in containers.items():
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        assert mounts.get(TLS_DIR) == "tls", where
        [volume] = [v for v in container["_volumes"] if v["name"] == "tls"]
        assert volume["secret"]["secretName"] == "lookaside-tls"
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert "LOOKASIDE_BALANCER_INSECURE_REGISTRATION" not in env, where
    balancer = {e["name"]: e for e in containers["Deployment/balancer"]["env"]}
    assert balancer["LOOKASIDE_BALANCER_TLS_CERT"]["value"] == f"{TLS_DIR}/server.pem"
    assert balancer["LOOKASIDE_BALANCER_BACKEND_TLS_CA"]["value"] == f"{TLS_DIR}/ca.pem"
    assert "{pool}" in balancer["LOOKASIDE_BALANCER_BACKEND_TLS_SERVER_NAME"]["value"]
    assert "LOOKASIDE_BALANCER_REGISTRATION_TOKEN" not in balancer  # per pool only
    assert balancer["LOOKASIDE_BALANCER_REGISTRATION_POLICY"]["value"].startswith("/etc/lookaside/")
    assert "secretKeyRef" in balancer["ROUTEGUIDE_REGISTRATION_TOKEN"]["valueFrom"]
    backend = {e["name"]: e.get("value") for e in containers["Deployment/routeguide"]["env"]}
    assert backend["LOOKASIDE_ROUTEGUIDE_TLS_CERT"] == f"{TLS_DIR}/server.pem"
    assert backend["LOOKASIDE_ROUTEGUIDE_BALANCER_TLS_CA"] == f"{TLS_DIR}/ca.pem"
    admin = containers["Deployment/admin"]
    assert {e["name"] for e in admin["env"]} >= {
        "LOOKASIDE_ADMIN_TLS_CERT",
        "LOOKASIDE_ADMIN_TLS_KEY",
    }
    assert admin["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    setup = {e["name"]: e.get("value") for e in containers["Job/setup"]["env"]}
    assert setup["LOOKASIDE_ADMIN_URL"].startswith("https://")
    for name in ("client-plain", "client-lookaside", "client-stock"):
        assert "--tls-ca" in containers[f"Job/{name}"]["args"], name
