"""No cast is lost: a worker killed while casts arrive, a broker restarted with or without a worker.

Real RabbitMQ: the shared broker for the worker kills, a private node
(:class:`~tests.functional.rabbit_node.RabbitNode`) for the broker restarts. Records are counted
from the worker's SQLite state store.
"""

from __future__ import annotations

import collections
import contextlib
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keramos.framework import loader
from keramos.framework.records import TaskRecord, TaskState
from tests.functional.conftest import WorkerProcess, delete_queues

IMAGE = "img"


def states(worker: WorkerProcess, request_ids: list[str]) -> dict[str, str | None]:
    """The state of each request's task record (``None``: no record)."""
    store = loader.load_state_store(worker.conf())
    try:
        found = {}
        for request_id in request_ids:
            record = store.get(TaskRecord, request_id)
            found[request_id] = None if record is None else record.state
        return found
    finally:
        store.close()


def wait_for(
    worker: WorkerProcess, request_ids: list[str], done: tuple[str | None, ...], timeout: float
) -> dict[str, str | None]:
    """Poll the state store until every request's state is in ``done`` or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while True:
        found = states(worker, request_ids)
        if all(state in done for state in found.values()) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


class Caster(threading.Thread):
    """Casts ``count`` create_amphora, ``interval`` seconds apart, from a client of ``worker``."""

    def __init__(self, worker: WorkerProcess, count: int, interval: float, prefix: str) -> None:
        super().__init__(name="caster", daemon=True)
        self.worker = worker
        self.count = count
        self.interval = interval
        self.prefix = prefix
        self.sent: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.worker.client() as client:
                for n in range(self.count):
                    self.sent.append(client.create_amphora(f"{self.prefix}-{n}", IMAGE))
                    time.sleep(self.interval)
        except BaseException as error:
            self.error = error


@contextlib.contextmanager
def worker_on(directory: Path, url: str, settings: dict | None = None) -> Iterator[WorkerProcess]:
    """A keramos-worker process on ``url`` (not started); stopped and its queues deleted after."""
    directory.mkdir(parents=True, exist_ok=True)
    worker = WorkerProcess(directory, url, settings or {})
    try:
        yield worker
    finally:
        worker.stop()
        with contextlib.suppress(Exception):
            delete_queues(url, worker.queues(), exchanges=[worker.topic])


def failures(worker: WorkerProcess, found: dict[str, str | None]) -> dict[str, int]:
    """How many failed records carry each error message (the amphora id left out)."""
    store = loader.load_state_store(worker.conf())
    try:
        return dict(
            collections.Counter(
                re.sub(r"kill-\d+", "kill-N", store.get(TaskRecord, request_id).message or "")
                for request_id, state in found.items()
                if state == TaskState.FAILURE
            )
        )
    finally:
        store.close()


def summary(found: dict[str, str | None]) -> str:
    return ", ".join(f"{state}: {n}" for state, n in collections.Counter(found.values()).items())


@pytest.mark.timeout(280)
def test_a_worker_killed_three_times_while_casts_arrive_loses_none(tmp_path, rabbit_url):
    with worker_on(tmp_path / "worker", rabbit_url) as worker:
        worker.start().wait_ready()
        caster = Caster(worker, 200, 0.05, "kill")
        caster.start()
        for _ in range(3):
            time.sleep(2.5)
            worker.stop(signal.SIGKILL)
            worker.start()
        caster.join(120)
        assert not caster.is_alive() and caster.error is None, caster.error
        worker.stop(signal.SIGKILL)
        worker.start().wait_ready()
        found = wait_for(worker, caster.sent, TaskState.TERMINAL, timeout=90)
        print(f"\n200 casts, 3 kills: {summary(found)}; failures: {failures(worker, found)}")
        missing = [request_id for request_id, state in found.items() if state is None]
        assert len(caster.sent) == 200
        assert missing == [], f"{len(missing)} casts have no record:\n{worker.log()[-4000:]}"


@pytest.mark.timeout(240)
def test_casts_queued_while_no_worker_runs_survive_a_broker_restart(tmp_path, private_rabbit):
    with worker_on(tmp_path / "worker", private_rabbit.url) as worker:
        worker.start().wait_ready()  # declares the durable queue
        assert worker.stop(signal.SIGTERM) == 0
        with worker.client() as client:
            request_ids = [client.create_amphora(f"queued-{n}", IMAGE) for n in range(100)]
        private_rabbit.restart()
        worker.start().wait_ready()
        found = wait_for(worker, request_ids, (TaskState.SUCCESS,), timeout=120)
        assert collections.Counter(found.values()) == {TaskState.SUCCESS: 100}, summary(found)


@pytest.mark.timeout(280)
def test_the_worker_rides_out_a_broker_restart_while_casts_arrive(tmp_path, private_rabbit):
    with worker_on(tmp_path / "worker", private_rabbit.url) as worker:
        worker.start().wait_ready()
        caster = Caster(worker, 150, 0.05, "restart")
        caster.start()
        time.sleep(2.5)
        private_rabbit.restart()
        caster.join(150)
        assert not caster.is_alive() and caster.error is None, caster.error
        found = wait_for(worker, caster.sent, TaskState.TERMINAL, timeout=120)
        print(f"\n150 casts, broker restarted: {summary(found)}")
        assert [request_id for request_id, state in found.items() if state is None] == []
        assert worker.process.poll() is None
        log = worker.log()
        assert log.count("intake: lost the broker") == 1, log[-4000:]
        assert "intake: broker" in log and "back after" in log, log[-4000:]
