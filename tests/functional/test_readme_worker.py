"""The README's "Running a worker" block works as written on the default configuration."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_worker_block() -> str:
    section = README.read_text(encoding="utf-8").split("## Running a worker", 1)[1]
    return re.search(r"```sh\n(.*?)^```$", section, re.DOTALL | re.MULTILINE)[1]


def test_the_readme_worker_example_creates_an_amphora(tmp_path):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    ran = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", readme_worker_block()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert '"status": "READY"' in ran.stdout, ran.stdout
    listed = ran.stdout.splitlines()
    header = next(index for index, line in enumerate(listed) if line.startswith("AMPHORA"))
    assert listed[header + 1].split()[:2] == ["amp-1", "READY"]
