"""``keramos-worker --check-health`` against the real RabbitMQ and Redis, and against ports where
nothing listens: one line per engine and an exit code an orchestrator's probe can use."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import unused_port

WORKER = Path(sys.executable).parent / "keramos-worker"


def check(tmp_path: Path, rabbit_port: int, redis_port: int) -> tuple[int, list[str], float]:
    config = tmp_path / "keramos.conf"
    config.write_text(
        "[DEFAULT]\n"
        f"transport_url = rabbit://guest:guest@127.0.0.1:{rabbit_port}/\n"
        f"state_path = {tmp_path / 'state'}\n"
        "[jobboard]\n"
        "enabled = true\n"
        f"url = redis://127.0.0.1:{redis_port}/0\n"
        "connect_timeout = 2\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [str(WORKER), "--config-file", str(config), "--check-health"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout.splitlines(), time.monotonic() - started


def test_every_engine_answers(tmp_path):
    code, lines, _elapsed = check(tmp_path, 5672, 6379)
    assert [line.split(":")[0] for line in lines] == ["broker", "jobboard", "persistence", "state store"]
    assert all(": ok (" in line for line in lines), lines
    assert code == 0


def test_engines_that_do_not_answer_fail_the_check_in_bounded_time(tmp_path):
    code, lines, elapsed = check(tmp_path, unused_port(), unused_port())
    failed = {line.split(":")[0] for line in lines if ": FAILED: " in line}
    assert failed == {"broker", "jobboard"}, lines
    assert code == 1
    assert elapsed < 40
