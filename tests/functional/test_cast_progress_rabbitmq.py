"""``keramos cast --wait`` piped, against a keramos-worker process on the real RabbitMQ: one line
per task start, end and revert, in the order they happened."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from tests.unit.test_flows_cli import atoms_as_taskflow_compiles

FAILING_FLOW = '''
import time

from taskflow import task
from taskflow.patterns import linear_flow

from keramos.framework.contracts import FlowFactory


class Step(task.Task):
    def execute(self):
        time.sleep(0.05)

    def revert(self, **kwargs):
        time.sleep(0.05)


class Fail(task.Task):
    def execute(self):
        raise RuntimeError("the third step fails")


class ThreeSteps(FlowFactory):
    """Two steps, then one that fails: the flow reverts."""

    name = "three_steps"

    def build(self):
        return linear_flow.Flow(self.name).add(Step("first"), Step("second"), Fail("third"))
'''


def progress_lines(stdout: str) -> list[tuple[str, str]]:
    """(task, event) of each progress line: ``[  0.123s] task  event``."""
    shown = []
    for line in stdout.splitlines():
        if line.startswith("["):
            task, event = line.split("]", 1)[1].split(None, 1)
            shown.append((task, event.strip()))
    return shown


REVERTED_THREE_STEPS = [
    ("first", "started"),
    ("first", "done"),
    ("second", "started"),
    ("second", "done"),
    ("third", "started"),
    ("third", "failed"),
    ("third", "reverting"),
    ("third", "reverted"),
    ("second", "reverting"),
    ("second", "reverted"),
    ("first", "reverting"),
    ("first", "reverted"),
]


@pytest.fixture
def failing_flow_installed(plugin_distribution, monkeypatch):
    site = plugin_distribution(
        {"keramos.flows": {"three_steps": "progress_flows:ThreeSteps"}}, {"progress_flows": FAILING_FLOW}
    )
    # Workers are other processes: they find the flow's distribution on their PYTHONPATH.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))


@pytest.fixture
def plugin_worker(failing_flow_installed, worker_process):
    return worker_process()


def test_cast_wait_piped_prints_each_task_start_and_end_in_order(plugin_worker, tmp_path):
    payload = json.dumps({"amphora_id": "progress-amp-1", "image_id": "img"})
    done = plugin_worker.cli("cast", "create_amphora", "--payload", payload, "--wait")
    assert done.returncode == 0, done.stderr + plugin_worker.log()
    expected = [
        (name, event)
        for name in atoms_as_taskflow_compiles("create_amphora", tmp_path)
        for event in ("started", "done")
    ]
    assert progress_lines(done.stdout) == expected
    assert "\r" not in done.stdout
    record = json.loads(done.stdout[done.stdout.index("\n{") :])
    assert record["state"] == "success"


def test_cast_wait_piped_prints_the_failure_and_each_revert(plugin_worker):
    failed = plugin_worker.cli("cast", "three_steps", "--wait")
    assert failed.returncode == 1, failed.stderr + plugin_worker.log()
    assert "the third step fails" in failed.stderr
    assert progress_lines(failed.stdout) == REVERTED_THREE_STEPS


def test_in_jobboard_mode_the_caller_sees_every_step_whichever_worker_runs_the_flow(
    failing_flow_installed, worker_process, pg_url, redis_server
):
    """Two workers on one jobboard, each with its own cast topic: the flow runs in whichever
    conductor claims it, and the caller's worker answers from the shared databases."""
    settings = {
        "jobboard": {"enabled": True, "url": redis_server.url, "name": f"kt-{uuid.uuid4().hex[:8]}",
                     "poll_interval": 0.1},
        "state_store": {"connection": pg_url},
        "persistence": {"connection": pg_url},
    }
    caller_side = worker_process(settings)
    worker_process(settings)
    for _ in range(2):
        failed = caller_side.cli("cast", "three_steps", "--wait")
        assert failed.returncode == 1, failed.stderr + caller_side.log()
        assert progress_lines(failed.stdout) == REVERTED_THREE_STEPS


def test_cast_wait_quiet_prints_only_the_outcome(plugin_worker):
    payload = json.dumps({"amphora_id": "progress-amp-2", "image_id": "img"})
    done = plugin_worker.cli("cast", "create_amphora", "--payload", payload, "--wait", "--quiet")
    assert done.returncode == 0, done.stderr
    assert progress_lines(done.stdout) == []
    request_id, document = done.stdout.split("\n", 1)
    assert json.loads(document)["request_id"] == request_id
