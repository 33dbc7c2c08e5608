"""Run observers: the hooks a run calls, in order, and observers that fail or watch one run only."""

from __future__ import annotations

import concurrent.futures
import logging
import sys
import threading
from pathlib import Path

import pytest

from keramos.framework import loader
from keramos.framework.config import make_conf
from keramos.framework.errors import FlowFailed, PayloadError, UnknownEvent
from keramos.framework.observers import RunObserver
from keramos.framework.records import TaskRecord, TaskState
from keramos.framework.runner import FlowRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sample_flows import Counting  # noqa: E402

STEPS = [f"step_{n}" for n in range(1, 7)]


class Journal(RunObserver):
    """Notes every hook as ``(hook, request_id, detail)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, object]] = []
        self._lock = threading.Lock()

    def _note(self, hook: str, request_id: str | None, detail: object = None) -> None:
        with self._lock:
            self.calls.append((hook, request_id, detail))

    def rejected(self, request_id, event, error):
        self._note("rejected", request_id, (event, type(error).__name__))

    def accepted(self, job):
        self._note("accepted", job.request_id, job.resource_id)

    def started(self, job):
        self._note("started", job.request_id)

    def task_state_changed(self, job, task_name, state, details):
        self._note("task_state_changed", job.request_id, (task_name, state))

    def succeeded(self, job, result, duration):
        assert duration > 0
        self._note("succeeded", job.request_id, result)

    def failed(self, job, failure, duration):
        assert duration > 0
        self._note("failed", job.request_id, (failure.error_type, type(failure.cause).__name__))

    def hooks(self, request_id: str | None = None) -> list[str]:
        """The hooks called, in order, task state changes folded into one entry per run of them."""
        folded: list[str] = []
        for hook, called_for, _ in self.calls:
            if request_id is not None and called_for != request_id:
                continue
            if not (hook == "task_state_changed" and folded and folded[-1] == hook):
                folded.append(hook)
        return folded

    def task_states(self, request_id: str, *states: str) -> list[tuple[str, str]]:
        """``(task, state)`` of the run's task state changes to one of ``states``."""
        return [
            detail
            for hook, called_for, detail in self.calls
            if hook == "task_state_changed" and called_for == request_id and detail[1] in states
        ]


class Exploding(RunObserver):
    """Raises in every hook."""

    def _explode(self, *args):
        raise RuntimeError("observer bug")

    rejected = accepted = started = task_state_changed = succeeded = failed = _explode


@pytest.fixture(params=["serial", "parallel"])
def make_runner(request, tmp_path):
    made = []

    def make(*observers: RunObserver) -> FlowRunner:
        conf = make_conf(
            config_files=[],
            overrides={
                "DEFAULT": {"state_path": str(tmp_path / "state")},
                "worker": {"engine": request.param},
                "persistence": {"enabled": False},
            },
        )
        drivers = loader.load_drivers(conf)
        runner = FlowRunner(
            conf, drivers, loader.load_flows(conf, drivers, extra=[Counting]), observers=observers
        )
        made.append(runner)
        return runner

    yield make
    for runner in made:
        runner.close()
        runner.drivers.close()


def cast(request_id: str, marker_dir: Path, **payload) -> dict:
    return {
        "event": "counting",
        "request_id": request_id,
        "payload": {"marker_dir": str(marker_dir), "label": "thing-1", **payload},
    }


def test_a_succeeding_flow_calls_accepted_started_each_task_then_succeeded(make_runner, tmp_path):
    journal = Journal()
    runner = make_runner(journal)
    runner.submit(cast("req-ok", tmp_path))
    assert journal.hooks() == ["accepted", "started", "task_state_changed", "succeeded"]
    assert journal.calls[0] == ("accepted", "req-ok", "thing-1")
    assert journal.calls[-1] == ("succeeded", "req-ok", {"step_5": "step_5"})
    assert journal.task_states("req-ok", "SUCCESS") == [(step, "SUCCESS") for step in STEPS]


def test_a_failing_flow_calls_failed_once_every_task_is_reverted(make_runner, tmp_path):
    journal = Journal()
    runner = make_runner(journal)
    with pytest.raises(FlowFailed):
        runner.submit(cast("req-bad", tmp_path, fail=True))
    assert journal.hooks() == ["accepted", "started", "task_state_changed", "failed"]
    assert journal.calls[-1] == ("failed", "req-bad", ("RuntimeError", "RuntimeError"))
    assert journal.task_states("req-bad", "FAILURE") == [("step_6", "FAILURE")]
    reverted = [task for task, _ in journal.task_states("req-bad", "REVERTED")]
    assert reverted[-5:] == [f"step_{n}" for n in range(5, 0, -1)]


@pytest.mark.parametrize(
    ("envelope", "expected"),
    [
        ({"event": "nope", "request_id": "req-r", "payload": {}}, ("nope", "UnknownEvent")),
        (
            {"event": "counting", "request_id": "req-r", "payload": {"marker_dir": 7}},
            ("counting", "PayloadError"),
        ),
    ],
)
def test_a_rejected_cast_calls_rejected_and_nothing_else(make_runner, envelope, expected):
    journal = Journal()
    runner = make_runner(journal)
    with pytest.raises((UnknownEvent, PayloadError)):
        runner.submit(envelope)
    assert journal.calls == [("rejected", "req-r", expected)]


def test_a_cast_that_cannot_be_recorded_is_rejected_with_the_stores_error(make_runner, tmp_path):
    journal = Journal()
    runner = make_runner(journal)

    def refuse(record):
        raise OSError("disk full")

    runner.drivers.state_store.insert_if_absent = refuse
    with pytest.raises(OSError):
        runner.submit(cast("req-full", tmp_path))
    assert journal.calls == [("rejected", "req-full", ("counting", "OSError"))]


def test_an_observer_that_raises_stops_neither_the_flow_nor_the_observers_after_it(
    make_runner, tmp_path, caplog
):
    journal = Journal()
    runner = make_runner(Exploding(), journal)
    with caplog.at_level(logging.ERROR, logger="keramos.framework.observers"):
        assert runner.submit(cast("req-1", tmp_path)) == {"step_5": "step_5"}
        with pytest.raises(FlowFailed) as raised:
            runner.submit(cast("req-2", tmp_path, fail=True))
        with pytest.raises(UnknownEvent):
            runner.submit({"event": "nope", "request_id": "req-3", "payload": {}})
    assert isinstance(raised.value.cause, RuntimeError)
    assert runner.drivers.state_store.get(TaskRecord, "req-1").state == TaskState.SUCCESS
    assert journal.hooks("req-1") == ["accepted", "started", "task_state_changed", "succeeded"]
    assert journal.hooks("req-2") == ["accepted", "started", "task_state_changed", "failed"]
    assert journal.hooks("req-3") == ["rejected"]
    messages = [record.getMessage() for record in caplog.records]
    for hook, request_id in [
        ("accepted", "req-1"),
        ("task_state_changed", "req-1"),
        ("succeeded", "req-1"),
        ("failed", "req-2"),
        ("rejected", "req-3"),
    ]:
        assert f"observer Exploding raised in {hook} (request {request_id})" in " ".join(messages)


def test_a_per_run_observer_sees_its_own_run_only_even_among_runs_at_once(make_runner, tmp_path):
    everything = Journal()
    runner = make_runner(everything)
    own = {f"req-{n}": Journal() for n in range(4)}
    markers = {request_id: tmp_path / request_id for request_id in own}
    for marker in markers.values():
        marker.mkdir()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(
            pool.map(
                lambda request_id: runner.submit(
                    cast(request_id, markers[request_id]), observers=[own[request_id]]
                ),
                own,
            )
        )
    for request_id, journal in own.items():
        assert {called_for for _, called_for, _ in journal.calls} == {request_id}
        assert journal.hooks() == ["accepted", "started", "task_state_changed", "succeeded"]
        assert journal.calls == [call for call in everything.calls if call[1] == request_id]
    assert runner.observers == (everything,)


def test_observers_added_later_see_the_runs_after_and_removed_ones_no_more(make_runner, tmp_path):
    runner = make_runner()
    late = Journal()
    runner.submit(cast("req-before", tmp_path))
    runner.add_observer(late)
    runner.submit(cast("req-during", tmp_path))
    runner.remove_observer(late)
    runner.submit(cast("req-after", tmp_path))
    assert {request_id for _, request_id, _ in late.calls} == {"req-during"}
