"""The Octavia half of ``bench/bench_octavia.py`` runs Octavia 19.0.0's own create flow to the end.

Run by ``tox -e octavia-compat``: the benchmark's baseline is only worth its ratio if every flow it
times really created an amphora in Octavia's database, with either kind of certificate.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.functional.agent_helpers import make_ca

SIDE = Path(__file__).resolve().parents[2] / "bench" / "octavia_side.py"


def _ask(*commands: dict) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-W", "ignore", str(SIDE)],
        input="".join(json.dumps(command) + "\n" for command in commands),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_create_flows_end_allocated_with_either_certificates(tmp_path):
    certificate, key = make_ca("bench side CA").write(str(tmp_path), "ca")
    answers = _ask(
        {"command": "setup_create", "directory": str(tmp_path), "ca_certificate": certificate, "ca_private_key": key},
        {"command": "create", "flows": 4, "concurrency": 2, "certificates": "placeholder"},
        {"command": "create", "flows": 2, "concurrency": 2, "certificates": "rsa-2048"},
    )
    assert answers[0] == {"ready": True}
    assert all(set(answer) == {"seconds"} and answer["seconds"] > 0 for answer in answers[1:]), answers


def test_a_failed_command_answers_its_error(tmp_path):
    answers = _ask({"command": "create", "flows": 1, "concurrency": 1, "certificates": "placeholder"})
    assert answers == [{"error": "create: send setup_create first"}]
