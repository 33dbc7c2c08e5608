"""Helper process for the jobboard tests: one worker process's conductor, serving ``ledger``.

Usage: ``python jobboard_worker.py CONFIG_FILE READY_FILE``

Builds a durable runner from CONFIG_FILE (the ``ledger`` flow among the installed ones), starts
a :class:`~keramos.framework.jobboard.Conductor`, writes READY_FILE and runs until SIGTERM
(then stops the conductor, waiting for its jobs). ``KERAMOS_TEST_BLOCK_AT=step_N`` makes every
ledger flow this process runs stop for good at that step (after writing a ``blocked-*``
marker next to the ledger), so that the test can kill the process mid-flow.

``ledger`` flows: each step appends ``start <request_id> <step> <host>`` to the ledger before
it works and ``done ...`` after; a poison cast's ``step_2`` ends the process with os._exit.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from taskflow import task
from taskflow.patterns import linear_flow

from keramos.framework import loader
from keramos.framework.config import make_conf
from keramos.framework.contracts import FlowFactory
from keramos.framework.jobboard import Conductor
from keramos.framework.persistence import get_backend
from keramos.framework.runner import FlowRunner
from keramos.framework.schema import Field

STEPS = 4


class LedgerStep(task.Task):
    """Notes its start and end in the ledger; may block (KERAMOS_TEST_BLOCK_AT) or poison."""

    def __init__(self, name: str, host: str) -> None:
        super().__init__(name=name)
        self._host = host

    def _note(self, ledger: str, what: str, request_id: str) -> None:
        with open(ledger, "a") as out:
            out.write(f"{what} {request_id} {self.name} {self._host}\n")

    def execute(self, ledger: str, request_id: str, pause: float, poison: bool) -> None:
        self._note(ledger, "start", request_id)
        if os.environ.get("KERAMOS_TEST_BLOCK_AT") == self.name:
            Path(ledger).with_name(f"blocked-{request_id}").touch()
            while True:
                time.sleep(60)
        if poison and self.name == "step_2":
            os._exit(70)
        time.sleep(pause)
        self._note(ledger, "done", request_id)


class Ledger(FlowFactory):
    """``STEPS`` ledger steps in a row."""

    name = "ledger"
    payload = {
        "ledger": Field(str),
        "pause": Field(float, default=0.0),
        "poison": Field(bool, default=False),
    }
    resource_field = "ledger"

    def build(self) -> linear_flow.Flow:
        return linear_flow.Flow(self.name).add(
            *(LedgerStep(f"step_{index}", self.conf.host) for index in range(1, STEPS + 1))
        )


def make_runner(config_file: str, *, observers: list | None = None) -> FlowRunner:
    """A durable runner serving ``ledger`` with the configuration of CONFIG_FILE."""
    conf = make_conf(["--config-file", config_file], config_files=[])
    drivers = loader.load_drivers(conf)
    flows = loader.load_flows(conf, drivers, extra=[Ledger])
    backend = get_backend(conf.persistence.connection, conf.persistence.synchronous)
    return FlowRunner(conf, drivers, flows, observers=observers, backend=backend)


def main(config_file: str, ready_file: str) -> int:
    runner = make_runner(config_file)
    conductor = Conductor(runner.conf, runner).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    Path(ready_file).write_text(str(os.getpid()))
    while not stop.wait(0.2):
        ok, detail = conductor.health()
        Path(ready_file).with_suffix(".health").write_text(f"{ok} {detail}\n")
    conductor.stop(10)
    runner.close()
    runner.drivers.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
