"""The packages' layers (ARCHITECTURE.md): imports point one way and no
module imports itself back through others.

    lookaside (tools) -> servers -> server_common -> lookaside_registry -> lookaside_proto
    client_lib -> lookaside_proto; only the tools import client_lib

The servers (balancer_server, admin_api, dns_responder) share a layer and
never import one another. Every import counts, also one inside a function
or under `if TYPE_CHECKING:`: a lazy import is still a door."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LAYERS = {
    "lookaside_proto": 0,
    "lookaside_registry": 1,
    "server_common": 2,
    "balancer_server": 3,
    "admin_api": 3,
    "dns_responder": 3,
    "lookaside": 4,
}
CLIENT = "client_lib"
PACKAGES = (*LAYERS, CLIENT)


def _modules(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(path: Path, module: str, known: dict[str, Path]) -> set[str]:
    """The modules of ours that `module` imports, resolved to the longest
    known module name (`from pkg import sub` counts as pkg.sub)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` imports pkg.sub; `from pkg import name`, pkg
            names = [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
    return targets


def graph(root: Path) -> dict[str, set[str]]:
    known = _modules(root)
    return {module: _imports(path, module, known) for module, path in known.items()}


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(edges.items()):
        here = module.split(".")[0]
        for target in sorted(targets):
            there = target.split(".")[0]
            if there == here:
                continue
            if here == CLIENT:
                ok = there == "lookaside_proto"
            elif there == CLIENT:
                ok = here == "lookaside"
            else:
                ok = LAYERS[there] < LAYERS[here]
            if not ok:
                problems.append(f"{module} imports {target}")
    return problems


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_import_points_down_a_layer():
    assert upward_imports(graph(ROOT)) == []


def test_no_module_imports_itself_back():
    assert cycles(graph(ROOT)) == []


def test_every_package_of_the_distribution_has_a_layer():
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert on_disk == set(PACKAGES)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "complaint"),
    [
        (
            {"lookaside_registry/store.py": "from balancer_server import feeds\n"},
            "lookaside_registry.store imports balancer_server",
        ),
        (
            {"balancer_server/x.py": "def f():\n    import admin_api.app\n"},
            "balancer_server.x imports admin_api",
        ),
        (
            {"client_lib/x.py": "from lookaside_registry.model import Backend\n"},
            "client_lib.x imports lookaside_registry",
        ),
        (
            {"server_common/x.py": "import client_lib\n"},
            "server_common.x imports client_lib",
        ),
        (
            {"lookaside_proto/x.py": "from ..lookaside import cli\n"},
            "lookaside_proto.x imports lookaside",
        ),
    ],
)
def test_the_check_fails_on_an_upward_import(tmp_path, files, complaint):
    problems = upward_imports(graph(_tree(tmp_path, files)))
    assert any(p.startswith(complaint) for p in problems), problems


def test_the_check_allows_downward_imports(tmp_path):
    root = _tree(
        tmp_path,
        {
            "lookaside/x.py": "import client_lib\nfrom balancer_server import y\n",
            "balancer_server/y.py": "from server_common import z\n",
            "server_common/z.py": "from lookaside_registry import w\n",
            "lookaside_registry/w.py": "import lookaside_proto\n",
            "client_lib/v.py": "from lookaside_proto import u\n",
        },
    )
    assert upward_imports(graph(root)) == []


def test_the_check_finds_a_lazy_cycle(tmp_path):
    root = _tree(
        tmp_path,
        {
            "server_common/a.py": "from server_common.b import g\n",
            "server_common/b.py": "def g():\n    from server_common import a\n",
        },
    )
    assert cycles(graph(root)) == [["server_common.a", "server_common.b"]]
