"""Shared test helpers: services that must be there in CI, and fake plugin distributions."""

from __future__ import annotations

import os
import socket
import textwrap
from pathlib import Path

import pytest
import stevedore

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(condition: bool, what: str) -> None:
    """Fail in CI (``CI=true``) and skip elsewhere when a needed service or program is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI and is missing", pytrace=False)
    pytest.skip(f"{what} is not available")


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def unused_port() -> int:
    """A TCP port of 127.0.0.1 nothing listens on (bound once by the kernel, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def plugin_distribution(tmp_path, monkeypatch):
    """Install, for one test, a fake distribution with the given modules and entry points.

    ``plugin_distribution({"group": {"name": "module:Class"}}, {"module": "source"})`` writes
    the modules and a ``*.dist-info`` on a new ``sys.path`` entry, which importlib.metadata and
    stevedore then find like any installed package.
    """

    def install(entry_points: dict[str, dict[str, str]], modules: dict[str, str]) -> Path:
        root = tmp_path / "site"
        dist_info = root / "keramos_test_plugin-1.0.dist-info"
        dist_info.mkdir(parents=True)
        (dist_info / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: keramos-test-plugin\nVersion: 1.0\n"
        )
        lines = []
        for group, names in entry_points.items():
            lines.append(f"[{group}]")
            lines += [f"{name} = {target}" for name, target in names.items()]
        (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for name, source in modules.items():
            (root / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(root))
        # stevedore caches each group's entry points for the life of the process.
        monkeypatch.setattr(stevedore.ExtensionManager, "ENTRY_POINT_CACHE", {})
        return root

    return install
