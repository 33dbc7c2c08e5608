"""A plugin shipped as its own distribution: pip-installed, loaded, and run through a real cast."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from keramos.framework.config import make_conf
from keramos.framework.records import TaskRecord, TaskState
from keramos.plugins.state_store.sqlalchemy import SQLAlchemyStateStore
from tests.functional.conftest import install_apart

PLUGIN = Path(__file__).resolve().parents[1] / "fixtures" / "keramos-example-plugin"


@pytest.fixture(scope="module")
def example_plugin(tmp_path_factory):
    """The environment of a process that sees the example plugin installed."""
    return install_apart(PLUGIN, tmp_path_factory.mktemp("example-plugin"))


def test_keramos_drivers_shows_the_plugin_and_its_distribution(example_plugin, tmp_path):
    listed = subprocess.run(
        [str(Path(sys.executable).parent / "keramos"), "drivers"], capture_output=True, text=True, env=example_plugin
    )
    lines = [line.split() for line in listed.stdout.splitlines()]
    assert ["example", "keramos_example.compute:ExampleCompute", "keramos-example-plugin", "1.0.0"] in lines
    assert ["example_boot", "keramos_example.flows:ExampleBoot", "keramos-example-plugin", "1.0.0"] in lines


def test_its_flow_runs_on_its_driver_through_a_real_cast(example_plugin, worker_process):
    worker = worker_process({"drivers": {"compute": "example"}}, env=example_plugin)
    with worker.client() as client:
        record = client.wait(client.cast("example_boot", {"name": "third-party"}), timeout=60)
    assert record["result"] == {"compute_id": "example-third-party"}


def test_sigterm_lets_a_running_flow_finish(example_plugin, worker_process):
    worker = worker_process({"drivers": {"compute": "example"}}, env=example_plugin)
    with worker.client() as client:
        request_id = client.cast("example_boot", {"name": "slow", "delay": 3.0})
        deadline = time.monotonic() + 30
        while (client.status(request_id) or {}).get("state") != TaskState.PROCESSING:
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.05)
    assert worker.stop() == 0
    conf = make_conf(["--config-file", str(worker.config_file)])
    store = SQLAlchemyStateStore(conf)
    try:
        assert store.get(TaskRecord, request_id).state == TaskState.SUCCESS
    finally:
        store.close()
