"""Helper process for the crash test of keramos.framework.persistence.

Usage: ``python persistence_crash_flow.py DB_URL WORKDIR start|resume``

``start`` saves a new logbook with one flow detail, writes their uuids to
``WORKDIR/ids.json`` and runs a six-task flow whose third task kills its own
process with SIGKILL on the first attempt (when ``WORKDIR/killed`` does not
exist yet). ``resume`` loads the flow detail from the database and runs the
flow again. Every task appends a line to ``WORKDIR/ran-<task>``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

from taskflow import engines, task
from taskflow.patterns import linear_flow
from taskflow.persistence import models
from taskflow.utils import persistence_utils

from keramos.framework.persistence import get_backend

TASKS = [f"t{i}" for i in range(1, 7)]


class Step(task.Task):
    """Record the run, pass the previous result on, kill the process once at t3."""

    def __init__(self, name: str, workdir: Path) -> None:
        index = TASKS.index(name)
        requires = [f"r{index}"] if index else []
        super().__init__(name=name, provides=f"r{index + 1}", requires=requires)
        self._workdir = workdir

    def execute(self, **inputs: int) -> int:
        with open(self._workdir / f"ran-{self.name}", "a") as marker:
            marker.write("run\n")
        killed = self._workdir / "killed"
        if self.name == "t3" and not killed.exists():
            killed.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return sum(inputs.values()) + 1


def main(db_url: str, workdir: Path, mode: str) -> None:
    """Start or resume the flow stored in ``db_url``."""
    flow = linear_flow.Flow("crash").add(*[Step(name, workdir) for name in TASKS])
    backend = get_backend(db_url)
    ids_file = workdir / "ids.json"
    if mode == "start":
        book = models.LogBook("crash-book")
        flow_detail = persistence_utils.create_flow_detail(flow, book=book, backend=backend)
        ids_file.write_text(json.dumps({"book": book.uuid, "flow": flow_detail.uuid}))
    else:
        ids = json.loads(ids_file.read_text())
        with contextlib.closing(backend.get_connection()) as conn:
            book = conn.get_logbook(ids["book"])
        flow_detail = book.find(ids["flow"])
    engines.load(flow, flow_detail=flow_detail, book=book, backend=backend).run()
    backend.close()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3])
