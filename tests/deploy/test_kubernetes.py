"""deploy/kubernetes/, checked without a cluster: every manifest validates
against the Kubernetes schemas, and the pieces of the article's setup are
there and name only commands and settings the package has."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import yaml

from tests.deploy.manifest import (
    KUBERNETES_DIR,
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
        assert container[probe]["grpc"]["port"] == 50051
    pdb = docs[("PodDisruptionBudget", "balancer")]
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert pdb["spec"]["minAvailable"] == 1


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
