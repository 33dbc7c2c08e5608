"""The flow runner: one code path for casts, the CLI and tests."""

from __future__ import annotations

import concurrent.futures
import contextlib
import subprocess
import sys
from pathlib import Path

import pytest

from keramos.framework import loader
from keramos.framework.config import make_conf
from keramos.framework.errors import FlowFailed, IncompatibleVersion, PayloadError, UnknownEvent
from keramos.framework.records import TaskRecord, TaskState
from keramos.framework.runner import FlowRunner
from keramos.framework.service import persistence_backend
from keramos.framework.testing import RecordingObserver

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from sample_flows import Counting, Fanout, make_runner  # noqa: E402


@pytest.fixture(params=["serial", "parallel"])
def engine(request):
    return request.param


@pytest.fixture(params=[True, False], ids=["durable", "volatile"])
def durable(request):
    return request.param


@pytest.fixture
def runner(tmp_path, engine, durable):
    conf = make_conf(
        config_files=[],
        overrides={
            "DEFAULT": {"state_path": str(tmp_path / "state")},
            "worker": {"engine": engine},
            "persistence": {"enabled": durable},
        },
    )
    drivers = loader.load_drivers(conf)
    made = FlowRunner(
        conf,
        drivers,
        loader.load_flows(conf, drivers, extra=[Counting, Fanout]),
        observers=[RecordingObserver()],
        backend=persistence_backend(conf),
    )
    yield made
    made.close()
    drivers.close()


def envelope(event, payload, request_id="req-1", **extra):
    return {"event": event, "request_id": request_id, "payload": payload, **extra}


def recorded(runner: FlowRunner) -> list[tuple[str, dict]]:
    """The events the runner fixture's :class:`RecordingObserver` kept."""
    return runner.observers[0].events


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_a_flow_runs_records_success_and_reports_start_and_end(runner, tmp_path):
    result = runner.submit(envelope("counting", {"marker_dir": str(tmp_path), "label": "r1"}))
    assert result == {"step_5": "step_5"}
    assert lines(tmp_path / "runs") == [f"step_{n}" for n in range(1, 6)]
    record = runner.drivers.state_store.get(TaskRecord, "req-1")
    assert (record.state, record.resource_id, record.result) == (
        TaskState.SUCCESS,
        "r1",
        {"step_5": "step_5"},
    )
    events = recorded(runner)
    assert [name for name, _ in events] == ["keramos.counting.start", "keramos.counting.end"]
    assert events[1][1]["request_id"] == "req-1"
    assert events[1][1]["resource_id"] == "r1"
    assert events[1][1]["duration"] > 0


def test_independent_tasks_all_run(runner, tmp_path):
    assert runner.submit(envelope("fanout", {"marker_dir": str(tmp_path)})) == {
        "a": "a",
        "b": "b",
        "c": "c",
    }
    assert sorted(lines(tmp_path / "runs")) == ["a", "b", "c"]


def test_a_failing_flow_reverts_records_failure_and_reports_an_error(runner, tmp_path):
    with pytest.raises(FlowFailed) as raised:
        runner.submit(envelope("counting", {"marker_dir": str(tmp_path), "fail": True}))
    assert isinstance(raised.value.cause, RuntimeError)
    assert lines(tmp_path / "reverts") == [f"step_{n}" for n in range(5, 0, -1)]
    record = runner.drivers.state_store.get(TaskRecord, "req-1")
    assert record.state == TaskState.FAILURE
    assert (record.error_type, record.message) == ("RuntimeError", "the sixth step exploded")
    name, payload = recorded(runner)[-1]
    assert name == "keramos.counting.error"
    assert payload["error"] == {"type": "RuntimeError", "message": "the sixth step exploded"}


@pytest.mark.parametrize(
    ("cast", "error", "message", "event_type"),
    [
        (envelope("nope", {}), UnknownEvent, "unknown event 'nope'", "keramos.nope.error"),
        (
            envelope("counting", {"marker_dir": "/tmp"}, version="2.0"),
            IncompatibleVersion,
            "counting 2.0 is not served (this worker serves counting 1.2)",
            "keramos.counting.error",
        ),
        (
            envelope("counting", {"marker_dir": "/tmp"}, version="1.3"),
            IncompatibleVersion,
            "counting 1.3 is not served",
            "keramos.counting.error",
        ),
        (
            envelope("counting", {"marker_dir": 7}),
            PayloadError,
            "counting: field 'marker_dir' must be str, not int",
            "keramos.counting.error",
        ),
        (
            envelope("Bad Name!", {}),
            UnknownEvent,
            "unknown event 'Bad Name!'",
            "keramos.invalid.error",
        ),
    ],
)
def test_invalid_casts_are_rejected_before_any_task_runs(
    runner, tmp_path, cast, error, message, event_type
):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        runner.submit(cast)
    record = runner.drivers.state_store.get(TaskRecord, "req-1")
    assert record.state == TaskState.FAILURE
    assert record.error_type == error.__name__
    assert recorded(runner)[-1][0] == event_type
    assert not (tmp_path / "runs").exists()


def test_an_older_minor_version_is_served(runner, tmp_path):
    runner.submit(envelope("counting", {"marker_dir": str(tmp_path)}, version="1.0"))
    assert runner.drivers.state_store.get(TaskRecord, "req-1").state == TaskState.SUCCESS


def test_finished_flows_leave_no_progress_records_behind(runner, tmp_path):
    runner.submit(envelope("counting", {"marker_dir": str(tmp_path)}))
    with contextlib.suppress(FlowFailed):
        runner.submit(envelope("counting", {"marker_dir": str(tmp_path), "fail": True}, "req-2"))
    assert runner.unfinished(runner.conf.host) == []
    if runner.backend is not None:
        with contextlib.closing(runner.backend.get_connection()) as connection:
            assert list(connection.get_logbooks()) == []


def test_a_flow_killed_half_way_resumes_from_its_last_completed_task(tmp_path):
    state, markers = tmp_path / "state", tmp_path / "markers"
    markers.mkdir()
    (markers / "crash").touch()
    crashed = subprocess.run(
        [sys.executable, str(HERE / "sample_flows.py"), str(state), str(markers), "req-k"],
        capture_output=True,
        timeout=120,
    )
    assert crashed.returncode == -9, crashed.stderr.decode()
    assert lines(markers / "runs") == ["step_1", "step_2", "step_3"]

    runner = make_runner(str(state))
    try:
        assert runner.drivers.state_store.get(TaskRecord, "req-k").state == TaskState.PROCESSING
        assert make_runner(str(state), host="another-host").unfinished("another-host") == []
        assert runner.resume_unfinished("crash-host") == 1
        record = runner.drivers.state_store.get(TaskRecord, "req-k")
        assert (record.state, record.result) == (TaskState.SUCCESS, {"step_5": "step_5"})
    finally:
        runner.close()
    assert lines(markers / "runs") == ["step_1", "step_2", "step_3", "step_3", "step_4", "step_5"]


class _BuildCounting(Counting):
    """Counting that notes every build."""

    builds = 0

    def build(self):
        type(self).builds += 1
        return super().build()


class _ReusableCounting(_BuildCounting):
    name = "reusable_counting"
    reusable = True
    builds = 0


class _FreshCounting(_BuildCounting):
    name = "fresh_counting"
    builds = 0


def test_a_reusable_flow_is_built_once_and_serves_runs_at_once_each_with_its_own_results(tmp_path):
    conf = make_conf(config_files=[], overrides={"DEFAULT": {"state_path": str(tmp_path / "state")}})
    drivers = loader.load_drivers(conf)
    runner = FlowRunner(
        conf,
        drivers,
        loader.load_flows(conf, drivers, extra=[_ReusableCounting, _FreshCounting]),
        backend=persistence_backend(conf),
    )
    try:
        markers = [tmp_path / f"m{i}" for i in range(8)]
        for marker in markers:
            marker.mkdir()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(
                pool.map(
                    lambda i: runner.submit(
                        envelope("reusable_counting", {"marker_dir": str(markers[i])}, request_id=f"req-{i}")
                    ),
                    range(8),
                )
            )
        assert results == [{"step_5": "step_5"}] * 8
        assert all(lines(marker / "runs") == [f"step_{n}" for n in range(1, 6)] for marker in markers)
        assert _ReusableCounting.builds == 1
        for i in range(3):
            runner.submit(envelope("fresh_counting", {"marker_dir": str(markers[i])}, request_id=f"fresh-{i}"))
        assert _FreshCounting.builds == 3
    finally:
        runner.close()
        drivers.close()


def _dies_before_recording(store, ending: str):
    """The state store's ``update``, dying (``_Killed``) as it would record a flow's ``ending``."""
    update = store.update

    def dying(record_type, key, **changes):
        if record_type is TaskRecord and changes.get("state") == ending:
            raise _Killed(f"worker died before recording {ending}")
        return update(record_type, key, **changes)

    return dying


class _Killed(BaseException):
    """Stands for a kill -9: nothing after it runs."""


@pytest.mark.parametrize(
    ("fail", "ending"), [(False, TaskState.SUCCESS), (True, TaskState.FAILURE)], ids=["success", "failure"]
)
def test_a_flow_that_ended_before_its_record_did_is_recorded_on_resume(tmp_path, monkeypatch, fail, ending):
    state, markers = tmp_path / "state", tmp_path / "markers"
    markers.mkdir()
    dying = make_runner(str(state))
    store = dying.drivers.state_store
    monkeypatch.setattr(store, "update", _dies_before_recording(store, ending))
    with pytest.raises(_Killed):
        dying.submit(envelope("counting", {"marker_dir": str(markers), "fail": fail}, "req-e"))
    dying.close()

    runner = make_runner(str(state))
    try:
        assert runner.drivers.state_store.get(TaskRecord, "req-e").state == TaskState.PROCESSING
        runner.resume_unfinished("crash-host")
        record = runner.drivers.state_store.get(TaskRecord, "req-e")
        assert record.state == ending
        if fail:
            assert (record.error_type, record.message) == ("RuntimeError", "the sixth step exploded")
        else:
            assert record.result == {"step_5": "step_5"}
        assert runner.unfinished("crash-host") == []
    finally:
        runner.close()
    assert lines(markers / "runs") == [f"step_{n}" for n in range(1, 6)]


def test_a_flow_killed_while_its_store_was_saved_resumes(tmp_path, monkeypatch):
    from taskflow import storage

    state, markers = tmp_path / "state", tmp_path / "markers"
    markers.mkdir()
    save = storage.Storage._save_atom_detail

    def dies_saving_the_store(self, connection, original, atom_detail):
        if atom_detail.name == storage.Storage.injector_name:
            raise _Killed("worker died after saving the store's detail, before its values")
        return save(self, connection, original, atom_detail)

    dying = make_runner(str(state))
    with monkeypatch.context() as patch:
        patch.setattr(storage.Storage, "_save_atom_detail", dies_saving_the_store)
        with pytest.raises(_Killed):
            dying.submit(envelope("counting", {"marker_dir": str(markers)}, "req-s"))
    dying.close()

    runner = make_runner(str(state))
    try:
        assert runner.resume_unfinished("crash-host") == 1
        record = runner.drivers.state_store.get(TaskRecord, "req-s")
        assert (record.state, record.message, record.result) == (TaskState.SUCCESS, None, {"step_5": "step_5"})
    finally:
        runner.close()
    assert lines(markers / "runs") == [f"step_{n}" for n in range(1, 6)]
