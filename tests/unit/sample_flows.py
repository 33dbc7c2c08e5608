"""Flows used by the runner tests; also run as a script to crash a flow half-way.

``python sample_flows.py STATE_PATH MARKER_DIR REQUEST_ID`` runs ``counting`` with durable
persistence under STATE_PATH; its task ``step_3`` kills the process with SIGKILL the first time
it runs (when MARKER_DIR/crash exists), leaving the flow half-done for a resume.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from taskflow import task
from taskflow.patterns import linear_flow, unordered_flow

from keramos.framework.contracts import FlowFactory
from keramos.framework.schema import Field


class CountingStep(task.Task):
    """Appends its name to MARKER_DIR/runs; step_3 may crash the process first."""

    def execute(self, marker_dir: str) -> str:
        with open(os.path.join(marker_dir, "runs"), "a") as runs:
            runs.write(self.name + "\n")
        crash = Path(marker_dir, "crash")
        if self.name == "step_3" and crash.exists():
            crash.unlink()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.name

    def revert(self, marker_dir: str, **kwargs) -> None:
        with open(os.path.join(marker_dir, "reverts"), "a") as reverts:
            reverts.write(self.name + "\n")


class Explode(task.Task):
    """Fails with a RuntimeError when ``fail`` is true."""

    def execute(self, fail: bool) -> None:
        if fail:
            raise RuntimeError("the sixth step exploded")


class Counting(FlowFactory):
    """Six steps (the last may fail), their progress marked on disk."""

    name = "counting"
    version = "1.2"
    payload = {
        "marker_dir": Field(str),
        "fail": Field(bool, default=False),
        "label": Field(str, default="x"),
    }
    resource_field = "label"
    result_keys = ("step_5",)

    def build(self):
        steps = [CountingStep(name=f"step_{n}", provides=f"step_{n}") for n in range(1, 6)]
        return linear_flow.Flow(self.name).add(*steps, Explode(name="step_6"))


class Fanout(FlowFactory):
    """Three independent steps the parallel engine may run at once."""

    name = "fanout"
    payload = {"marker_dir": Field(str)}
    result_keys = ("a", "b", "c")

    def build(self):
        return unordered_flow.Flow(self.name).add(
            *(CountingStep(name=name, provides=name) for name in "abc")
        )


def make_runner(state_path: str, host: str = "crash-host"):
    """A durable runner serving the sample flows, state under ``state_path``."""
    from keramos.framework import loader
    from keramos.framework.config import make_conf
    from keramos.framework.runner import FlowRunner
    from keramos.framework.service import persistence_backend

    conf = make_conf(
        config_files=[],
        overrides={"DEFAULT": {"state_path": state_path, "host": host}},
    )
    drivers = loader.load_drivers(conf)
    flows = loader.load_flows(conf, drivers, extra=[Counting, Fanout])
    return FlowRunner(conf, drivers, flows, backend=persistence_backend(conf))


if __name__ == "__main__":
    state, markers, request_id = sys.argv[1:4]
    make_runner(state).submit(
        {"event": "counting", "request_id": request_id, "payload": {"marker_dir": markers}}
    )
