"""Taking casts in: one request id runs one flow, every refusal is recorded, no record is left
``pending`` by a crash at any step of the accept (SQLite, and PostgreSQL when it is there)."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from keramos.framework import loader
from keramos.framework.config import make_conf
from keramos.framework.envelope import envelope_digest, invalid_request_id
from keramos.framework.errors import DuplicateRequest
from keramos.framework.records import TaskRecord, TaskState
from keramos.framework.rpc import WorkerEndpoint
from keramos.framework.runner import Accepted, FlowRunner
from keramos.framework.service import persistence_backend
from keramos.framework.testing import RecordingObserver
from tests.conftest import port_open, require

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from accept_crash import STEPS, envelope  # noqa: E402
from sample_flows import Counting, make_runner  # noqa: E402

SERVER = "postgresql+psycopg2://postgres@127.0.0.1:5432"


@pytest.fixture(scope="module")
def postgresql_url():
    """One database for the module (dropped after it); tests clear its task table."""
    require(port_open("127.0.0.1", 5432), "PostgreSQL on 127.0.0.1:5432")
    name = f"keramos_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(f"{SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield f"{SERVER}/{name}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def runner(request, tmp_path):
    overrides = {"DEFAULT": {"state_path": str(tmp_path / "state"), "host": "crash-host"}}
    if request.param == "postgresql":
        overrides["state_store"] = {"connection": request.getfixturevalue("postgresql_url")}
    conf = make_conf(config_files=[], overrides=overrides)
    drivers = loader.load_drivers(conf)
    with drivers.state_store.engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM keramos_tasks"))
    made = FlowRunner(
        conf,
        drivers,
        loader.load_flows(conf, drivers, extra=[Counting]),
        observers=[RecordingObserver()],
        backend=persistence_backend(conf),
    )
    yield made
    made.close()
    drivers.close()


def runs(markers: Path) -> list[str]:
    path = markers / "runs"
    return path.read_text().split() if path.exists() else []


def logbooks(runner: FlowRunner) -> list:
    with contextlib.closing(runner.backend.get_connection()) as connection:
        return list(connection.get_logbooks())


def errors(runner: FlowRunner) -> list[dict]:
    return [payload["error"] for name, payload in runner.observers[0].events if name.endswith(".error")]


def test_a_finished_request_sent_again_is_dropped_and_its_record_unchanged(runner, tmp_path, caplog):
    cast = envelope(str(tmp_path), "req-done")
    assert runner.submit(cast) == {"step_5": "step_5"}
    before = runner.drivers.state_store.get(TaskRecord, "req-done")
    with caplog.at_level(logging.INFO, logger="keramos.framework.runner"):
        assert runner.take(dict(cast)) is None
    assert runner.drivers.state_store.get(TaskRecord, "req-done") == before
    assert before.state == TaskState.SUCCESS and before.digest == envelope_digest(cast)
    assert runs(tmp_path) == [f"step_{n}" for n in range(1, 6)]
    assert "dropped cast req-done: delivered again, already taken (success)" in caplog.text
    assert errors(runner) == []
    with pytest.raises(DuplicateRequest, match="taken already by this very cast"):
        runner.submit(cast)


def test_another_cast_under_a_taken_request_id_is_refused_and_the_first_record_kept(runner, tmp_path):
    runner.submit(envelope(str(tmp_path), "req-one"))
    before = runner.drivers.state_store.get(TaskRecord, "req-one")
    other = {**envelope(str(tmp_path), "req-one"), "payload": {"marker_dir": str(tmp_path), "label": "y"}}
    assert runner.take(other) is None
    assert runner.drivers.state_store.get(TaskRecord, "req-one") == before
    assert errors(runner)[-1]["type"] == "DuplicateRequest"
    assert "request id req-one is already taken by another cast ('counting', success)" in errors(runner)[-1]["message"]
    assert len(runs(tmp_path)) == 5
    assert logbooks(runner) == []


def test_a_refused_cast_sent_again_is_reported_and_recorded_once(runner):
    cast = {"event": "nope", "request_id": "req-bad", "payload": {}}
    assert runner.take(cast) is None
    assert runner.take(dict(cast)) is None
    assert [error["type"] for error in errors(runner)] == ["UnknownEvent"]
    record = runner.drivers.state_store.get(TaskRecord, "req-bad")
    assert (record.state, record.error_type) == (TaskState.FAILURE, "UnknownEvent")


def test_of_deliveries_of_one_cast_at_once_exactly_one_is_taken_and_runs(runner, tmp_path):
    cast = envelope(str(tmp_path), "req-race")
    barrier = threading.Barrier(6)
    taken: list = []

    def deliver() -> None:
        barrier.wait()
        taken.append(runner.take(dict(cast)))

    threads = [threading.Thread(target=deliver) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    accepted = [outcome for outcome in taken if isinstance(outcome, Accepted)]
    assert len(accepted) == 1 and taken.count(None) == 5
    assert [book.uuid for book in logbooks(runner)] == [accepted[0].book.uuid]
    runner.run(accepted[0].job, accepted[0].book, accepted[0].flow_detail)
    assert len(runs(tmp_path)) == 5


def refused(runner: FlowRunner, cast: dict, request_id: str, caplog) -> TaskRecord:
    """Take ``cast``; check it was refused, recorded under ``request_id``, logged printable."""
    with caplog.at_level(logging.INFO):
        assert runner.take(cast) is None
    record = runner.drivers.state_store.get(TaskRecord, request_id)
    assert record.state == TaskState.FAILURE
    assert len(record.message) < 400
    for logged in caplog.records:
        logged.getMessage().encode("utf-8")
    assert len(caplog.text) < 4000
    assert "Logging error" not in caplog.text
    return record


def test_a_version_of_five_thousand_digits_is_refused_and_recorded(runner, tmp_path, caplog):
    cast = {**envelope(str(tmp_path), "req-v"), "version": "1." + "9" * 5000}
    record = refused(runner, cast, "req-v", caplog)
    assert record.error_type == "IncompatibleVersion"
    assert record.message.startswith("version '1.99999") and record.message.count("…(5002 bytes)") == 1


def test_the_rpc_endpoint_records_a_version_of_five_thousand_digits_and_raises_nothing(runner, tmp_path):
    endpoint = WorkerEndpoint(runner)
    try:
        endpoint.handle_event({}, {**envelope(str(tmp_path), "req-rpc"), "version": "1." + "0" * 5000})
    finally:
        endpoint.drain(1)
    assert runner.drivers.state_store.get(TaskRecord, "req-rpc").error_type == "IncompatibleVersion"


def test_a_request_id_of_one_megabyte_is_refused_and_recorded_under_a_derived_id(runner, tmp_path, caplog):
    raw = "r" * 1_000_000
    record = refused(runner, envelope(str(tmp_path), raw), invalid_request_id(raw), caplog)
    assert record.error_type == "InvalidRequestId"
    assert record.request_id.startswith("req-invalid-") and len(record.request_id) == 28
    assert "'rrrr" in record.message and "…(1000000 bytes)" in record.message
    assert invalid_request_id(raw) in caplog.text


@pytest.mark.parametrize("raw", ["req-\ud800", "req-\x00\n\x1b[31m", "req-1 2", 42, ["req-1"]])
def test_a_request_id_with_lone_surrogates_or_control_characters_is_refused_printably(
    runner, tmp_path, caplog, raw
):
    record = refused(runner, envelope(str(tmp_path), raw), invalid_request_id(raw), caplog)
    assert record.error_type == "InvalidRequestId"
    record.message.encode("ascii")
    assert not runs(tmp_path)


def test_a_missing_request_id_is_reported_not_recorded(runner, tmp_path):
    assert runner.take({"event": "counting", "payload": {"marker_dir": str(tmp_path)}}) is None
    assert errors(runner)[-1]["message"] == "the cast carries no request_id"


def test_a_ten_megabyte_field_is_refused_and_quoted_in_a_bounded_excerpt(runner, tmp_path, caplog):
    cast = envelope("x" * 10_000_000, "req-big")
    record = refused(runner, cast, "req-big", caplog)
    assert record.error_type == "PayloadError"
    assert "bytes of JSON, more than [worker] max_payload_bytes (1048576)" in record.message


def test_a_field_under_the_size_limit_is_quoted_in_a_bounded_excerpt(runner, tmp_path, caplog):
    cast = {**envelope(str(tmp_path), "req-label"), "version": "1.2"}
    cast["payload"] = {"marker_dir": str(tmp_path), "fail": "x" * 500_000}
    record = refused(runner, cast, "req-label", caplog)
    assert record.message == "counting: field 'fail' must be bool, not str"


def test_a_payload_with_a_lone_surrogate_is_refused(runner, tmp_path, caplog):
    record = refused(runner, envelope("\udc80/tmp", "req-sur"), "req-sur", caplog)
    assert "payload holds a lone surrogate" in record.message


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("first", ["restart", "redelivery"])
def test_a_crash_at_any_step_of_the_accept_ends_in_one_run_and_no_pending_record(tmp_path, step, first):
    state, markers = tmp_path / "state", tmp_path / "markers"
    markers.mkdir()
    crashed = subprocess.run(
        [sys.executable, str(HERE / "accept_crash.py"), str(state), str(markers), "req-c", step],
        capture_output=True,
        timeout=120,
    )
    assert crashed.returncode == 9, crashed.stderr.decode()
    assert runs(markers) == []
    runner = make_runner(str(state))
    try:

        def redeliver() -> None:
            accepted = runner.take(envelope(str(markers), "req-c"))
            if accepted is not None:
                runner.run(accepted.job, accepted.book, accepted.flow_detail)

        def restart() -> None:
            runner.resume_unfinished("crash-host")

        for recover in (redeliver, restart) if first == "redelivery" else (restart, redeliver):
            recover()
        record = runner.drivers.state_store.get(TaskRecord, "req-c")
        assert (record.state, record.result) == (TaskState.SUCCESS, {"step_5": "step_5"})
        assert runs(markers) == [f"step_{n}" for n in range(1, 6)]
        assert logbooks(runner) == []
        restart()
        assert runner.drivers.state_store.find(TaskRecord, state=TaskState.PENDING) == []
    finally:
        runner.close()


class _Flaky:
    """Wraps a state store's insert_if_absent: raises once, before or after inserting."""

    def __init__(self, store, *, inserts: bool) -> None:
        self.insert = store.insert_if_absent
        self.inserts = inserts
        self.raised = False
        store.insert_if_absent = self

    def __call__(self, record):
        if self.raised:
            return self.insert(record)
        self.raised = True
        if self.inserts:
            self.insert(record)
        raise OSError("connection lost")


@pytest.mark.parametrize("inserts", [False, True], ids=["lost-before-insert", "lost-after-insert"])
def test_an_accept_whose_record_insert_fails_is_finished_by_the_redelivery(tmp_path, inserts):
    markers = tmp_path / "markers"
    markers.mkdir()
    runner = make_runner(str(tmp_path / "state"))
    try:
        _Flaky(runner.drivers.state_store, inserts=inserts)
        cast = envelope(str(markers), "req-f")
        with pytest.raises(OSError):
            runner.take(cast)
        accepted = runner.take(dict(cast))
        assert isinstance(accepted, Accepted)
        runner.run(accepted.job, accepted.book, accepted.flow_detail)
        assert runner.take(dict(cast)) is None
    finally:
        runner.close()
    restarted = make_runner(str(tmp_path / "state"))
    try:
        assert restarted.resume_unfinished("crash-host") == 0
        assert logbooks(restarted) == []
        assert restarted.drivers.state_store.get(TaskRecord, "req-f").state == TaskState.SUCCESS
    finally:
        restarted.close()
    assert len(runs(markers)) == 5


def test_a_record_whose_flow_detail_is_gone_is_failed_at_start(tmp_path):
    runner = make_runner(str(tmp_path / "state"))
    try:
        store = runner.drivers.state_store
        store.save(TaskRecord(request_id="req-lost", event="counting", owner="crash-host", flow_uuid="gone"))
        store.save(TaskRecord(request_id="req-elsewhere", event="counting", owner="other", flow_uuid="gone"))
        runner.resume_unfinished("crash-host")
        record = store.get(TaskRecord, "req-lost")
        assert (record.state, record.error_type) == (TaskState.FAILURE, "Abandoned")
        assert "cast it again under a new request id" in record.message
        assert store.get(TaskRecord, "req-elsewhere").state == TaskState.PENDING
    finally:
        runner.close()


def test_a_request_id_reserved_by_its_caster_is_taken_by_the_first_cast_under_it(runner, tmp_path):
    store = runner.drivers.state_store
    store.save(TaskRecord(request_id="req-reserved", event="counting", resource_id="x"))
    store.save(TaskRecord(request_id="req-reserved-bad", event="counting"))
    cast = envelope(str(tmp_path), "req-reserved")
    accepted = runner.take(cast)
    assert isinstance(accepted, Accepted)
    record = store.get(TaskRecord, "req-reserved")
    assert (record.digest, record.flow_uuid) == (envelope_digest(cast), accepted.flow_detail.uuid)
    assert runner.take(dict(cast)) is None
    runner.run(accepted.job, accepted.book, accepted.flow_detail)
    assert store.get(TaskRecord, "req-reserved").state == TaskState.SUCCESS
    assert runner.take({**envelope(str(tmp_path), "req-reserved-bad"), "version": "9.0"}) is None
    refused = store.get(TaskRecord, "req-reserved-bad")
    assert (refused.state, refused.error_type) == (TaskState.FAILURE, "IncompatibleVersion")
