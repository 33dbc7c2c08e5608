"""The layers, read from the imports: flows and drivers rest on the core, neither on the other.

``framework/`` (the core) and ``flows/`` never import ``keramos.plugins``: the CLI and the demo
get drivers and programs through the loader. Flow code never imports a transport (oslo.messaging,
Flask, requests): adapters at the edge do.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"framework": "keramos.framework", "flows": "keramos.flows", "plugins": "keramos.plugins"}
TRANSPORTS = ("oslo_messaging", "flask", "requests", "werkzeug", "urllib3", "kombu")


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def imported_names(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """Every module ``path`` imports, at any depth (also inside functions and TYPE_CHECKING)."""
    relative = path.relative_to(root).with_suffix("").parts
    here = [*PACKAGES[relative[0]].split("."), *relative[1:]]
    if here[-1] == "__init__":
        here[-1] = "__package__"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def offending(folders: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for folder in folders
        for path in modules(folder)
        for line, name in imported_names(path)
        if any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden)
    ]


def test_the_tree_has_modules_to_check():
    assert len(modules("framework")) > 20 and len(modules("flows")) > 5


def test_neither_the_core_nor_the_flows_import_a_plugin():
    assert offending(("framework", "flows"), ("keramos.plugins",)) == []


def test_flows_import_the_core_only():
    assert offending(("flows",), ("keramos.plugins", "keramos.bench", "tests")) == []


def test_flows_import_no_transport():
    assert offending(("flows",), TRANSPORTS) == []


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from keramos.plugins.noop import NoopCompute\n", ["keramos.plugins.noop"]),
        ("def f():\n    import keramos.plugins.agent.server\n", ["keramos.plugins.agent.server"]),
        ("from ...plugins import noop\n", ["keramos.plugins"]),
        ("from . import progress\n", ["keramos.framework.cli"]),
    ],
)
def test_the_checker_sees_every_form_of_import(tmp_path, source, expected):
    (tmp_path / "framework" / "cli").mkdir(parents=True)
    module = tmp_path / "framework" / "cli" / "bad.py"
    module.write_text(source)
    assert [name for _line, name in imported_names(module, tmp_path)] == expected


def test_an_api_service_importing_the_client_loads_neither_the_runner_nor_its_engines():
    probe = (
        "import sys, keramos.framework.client\n"
        "heavy = ('taskflow', 'sqlalchemy', 'keramos.framework.runner', 'keramos.framework.persistence')\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith(heavy))))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert loaded.stdout.split() == []


def module_name(path: Path, root: Path = ROOT) -> str:
    relative = path.relative_to(root).with_suffix("").parts
    parts = [*PACKAGES[relative[0]].split("."), *relative[1:]]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Which Keramos module imports which (``from package import module`` names the module)."""
    paths = {module_name(path, root): path for folder in PACKAGES for path in modules_under(root, folder)}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                if node.level:
                    base = base[: len(base) - node.level + 1]
                    module = ".".join([*base, node.module] if node.module else base)
                else:
                    module = node.module or ""
                candidates = [f"{module}.{alias.name}" for alias in node.names] + [module]
            else:
                continue
            for candidate in candidates:
                if candidate in paths:
                    targets.add(candidate)
                    break
        graph[name] = targets - {name}
    return graph


def modules_under(root: Path, folder: str) -> list[Path]:
    return sorted((root / folder).rglob("*.py"))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_not_even_for_type_hints():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_type_only_cycle(tmp_path):
    (tmp_path / "framework" / "contracts").mkdir(parents=True)
    (tmp_path / "framework" / "contracts" / "__init__.py").write_text("from .flow import Flow\n")
    (tmp_path / "framework" / "contracts" / "flow.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from keramos.framework import drivers\n"
    )
    (tmp_path / "framework" / "drivers.py").write_text("from keramos.framework.contracts import Flow\n")
    assert cycles(import_graph(tmp_path)) == [
        ["keramos.framework.contracts", "keramos.framework.contracts.flow", "keramos.framework.drivers"]
    ]
