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
