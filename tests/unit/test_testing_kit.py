"""The in-process testing kit shipped to flow and plugin authors."""

from __future__ import annotations

import pytest

from keramos.framework.errors import DriverError, PayloadError
from keramos.framework.records import AmphoraRecord, AmphoraStatus, TaskRecord, TaskState
from keramos.framework.testing import InProcessWorker
from keramos.plugins.noop import NoopCompute


class NoCapacityCompute(NoopCompute):
    def build(self, amphora_id, image_id, config_drive, *, flavor=None):
        raise DriverError("no valid host was found")


def test_a_cast_travels_the_fake_transport_and_returns_the_flow_result():
    with InProcessWorker() as worker:
        result = worker.cast_and_wait("create_amphora", {"amphora_id": "a1", "image_id": "img"})
        assert result["amphora"]["status"] == AmphoraStatus.READY
        assert worker.state_store.get(AmphoraRecord, "a1").status == AmphoraStatus.READY
        assert worker.events.types() == [
            "keramos.create_amphora.start",
            "keramos.create_amphora.end",
        ]


def test_swapping_in_one_driver_and_getting_the_flows_own_error_back():
    with InProcessWorker(compute=NoCapacityCompute) as worker:
        assert isinstance(worker.drivers.compute, NoCapacityCompute)
        with pytest.raises(DriverError, match="no valid host was found"):
            worker.cast_and_wait("create_amphora", {"amphora_id": "a1", "image_id": "img"})
        with pytest.raises(DriverError, match="no valid host was found"):
            worker.run("create_amphora", {"amphora_id": "a2", "image_id": "img"})
        assert worker.drivers.cert_manager.bundles == {}


def test_the_worker_keeps_serving_after_a_bad_cast():
    with InProcessWorker() as worker:
        bad = worker.cast("create_amphora", {"amphora_id": "a1"})
        with pytest.raises(Exception, match="missing field"):
            worker.wait(bad)
        assert worker.state_store.get(TaskRecord, bad).error_type == PayloadError.__name__
        good = worker.cast("create_amphora", {"amphora_id": "a1", "image_id": "i"})
        worker.wait(good)
        assert worker.state_store.get(TaskRecord, good).state == TaskState.SUCCESS


def test_the_pytest_fixture_builds_and_stops_workers(keramos_worker, tmp_path):
    worker = keramos_worker(compute=NoopCompute)
    worker.cast_and_wait("create_amphora", {"amphora_id": "a1", "image_id": "img"})
    assert (tmp_path / "keramos-worker-0" / "keramos.sqlite").exists()


def test_a_cast_that_cannot_be_recorded_is_reported_and_the_worker_goes_on():
    from keramos.plugins.state_store.memory import MemoryStateStore

    class RefusingStore(MemoryStateStore):
        refuse = True

        def save(self, record):
            if self.refuse:
                raise OSError("disk full")
            return super().save(record)

        def insert_if_absent(self, record):
            if self.refuse:
                raise OSError("disk full")
            return super().insert_if_absent(record)

    with InProcessWorker(state_store=RefusingStore) as worker:
        endpoint = worker.worker.endpoint
        envelope = {"event": "delete_amphora", "request_id": "req-x", "payload": {"amphora_id": "a"}}
        endpoint.handle_event({}, envelope)
        assert worker.events.events[-1] == (
            "keramos.delete_amphora.error",
            {"request_id": "req-x", "error": {"type": "OSError", "message": "disk full"}},
        )
        worker.drivers.state_store.refuse = False
        worker.cast_and_wait("create_amphora", {"amphora_id": "a1", "image_id": "i"})


def test_progress_callbacks_and_observers_watch_the_runs_of_an_in_process_worker():
    from keramos.framework.observers import RunObserver

    class Outcomes(RunObserver):
        def __init__(self):
            self.seen = []

        def succeeded(self, job, result, duration):
            self.seen.append((job.event, job.resource_id))

    everywhere, this_run, outcomes = [], [], Outcomes()
    with InProcessWorker(
        progress=lambda task, state, details: everywhere.append((task, state)),
        observers=[outcomes],
    ) as worker:
        worker.cast_and_wait("create_amphora", {"amphora_id": "a1", "image_id": "img"})
        cast_states = list(everywhere)
        worker.run(
            "delete_amphora",
            {"amphora_id": "a1"},
            on_progress=lambda task, state, details: this_run.append((task, state)),
        )
    assert ("boot_amphora", "SUCCESS") in cast_states
    assert this_run and this_run == everywhere[len(cast_states):]
    assert outcomes.seen == [("create_amphora", "a1"), ("delete_amphora", "a1")]
