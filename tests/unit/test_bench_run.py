"""bench/run.py when a benchmark's baseline is not installed: one line saying why, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_missing_octavia_is_one_line_and_exit_status_2(tmp_path):
    missing = tmp_path / "no-such-python"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--only", "octavia"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KERAMOS_OCTAVIA_PYTHON": str(missing)},
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"bench octavia: $KERAMOS_OCTAVIA_PYTHON={missing} has no octavia 19.0.0"
    assert "Traceback" not in result.stderr
