"""Keramos's commands and a plugin author's test run print no warning on a fresh install."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
COMMANDS = ("keramos", "keramos-worker", "keramos-agent", "keramos-health", "keramos-proxy")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_prints_nothing_on_stderr(command):
    shown = subprocess.run([str(BIN / command), "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip()
    assert shown.stderr == ""


def test_a_plugin_authors_pytest_run_shows_no_warning(tmp_path):
    (tmp_path / "test_my_flow.py").write_text(
        textwrap.dedent(
            """
            def test_create_amphora_on_the_noop_drivers(keramos_worker):
                worker = keramos_worker()
                created = worker.cast_and_wait("create_amphora", {"amphora_id": "amp-1", "image_id": "img-1"})
                assert created["amphora"]["status"] == "READY"
            """
        )
    )
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    summary = ran.stdout.strip().splitlines()[-1]
    assert "1 passed" in summary
    assert "warning" not in summary, ran.stdout
    assert "warnings summary" not in ran.stdout, ran.stdout
    assert ran.stderr == ""
