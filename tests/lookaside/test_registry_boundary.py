"""Only lookaside_registry/ knows Redis: no other module of the product
imports redis (the test harnesses that start and break Redis servers
excepted), and none catches redis's exceptions by name."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [
    "lookaside",
    "server_common",
    "balancer_server",
    "admin_api",
    "dns_responder",
    "client_lib",
]
# Harnesses that run Redis servers themselves (the lab, the chaos lab,
# the tests' servers); they are not on any request path.
HARNESSES = {
    "lookaside/redis_process.py",
    "lookaside/redis_cluster.py",
    "lookaside/chaos/cluster.py",
}


def _modules() -> list[Path]:
    out = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith("lookaside_registry/") or rel in HARNESSES:
                continue
            if "/proto/" in rel:
                continue
            out.append(path)
    return out


def _redis_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] == "redis"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "redis":
                found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and node.attr == "exceptions":
            if isinstance(node.value, ast.Name) and node.value.id == "redis":
                found.append("redis.exceptions")
    return [f"{path.relative_to(ROOT)}:{use}" for use in found]


def test_no_module_outside_the_registry_knows_redis() -> None:
    modules = _modules()
    assert len(modules) > 50  # the scan really saw the code base
    uses = [use for path in modules for use in _redis_uses(path)]
    assert uses == [], "Redis used outside lookaside_registry/: " + ", ".join(uses)


def test_the_scan_finds_a_redis_import() -> None:
    probe = ROOT / "lookaside_registry" / "store.py"
    assert _redis_uses(probe), "the scan must see the registry's own import"
