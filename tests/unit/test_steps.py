"""Following a run's tasks: the steps records keep, get_progress, and what cast --wait prints."""

from __future__ import annotations

import io

import pytest

from keramos.framework.cli.watch import StepPrinter
from keramos.framework.errors import FlowFailed
from keramos.framework.records import TaskRecord
from keramos.framework.steps import StepTracker, make_step
from keramos.framework.testing import InProcessWorker
from tests.unit.sample_flows import Counting

STEPS = [f"step_{n}" for n in range(1, 7)]


def tracked(*snapshots):
    events: list[tuple[str, str]] = []
    tracker = StepTracker(lambda task, event: events.append((task, event)))
    for snapshot in snapshots:
        tracker.update([make_step(*step) for step in snapshot])
    return events


def test_states_seen_late_are_reported_as_every_event_that_led_to_them_in_order():
    events = tracked(
        [("a", "RUNNING", False), ("b", "PENDING", False), ("c", "PENDING", False)],
        [("a", "REVERTED", False), ("b", "REVERTED", False), ("c", "REVERTED", True)],
    )
    assert events == [
        ("a", "started"),
        ("a", "done"),
        ("b", "started"),
        ("b", "done"),
        ("c", "started"),
        ("c", "failed"),
        ("c", "reverting"),
        ("c", "reverted"),
        ("b", "reverting"),
        ("b", "reverted"),
        ("a", "reverting"),
        ("a", "reverted"),
    ]


def test_each_event_is_reported_once_and_a_rerun_task_again_from_its_start():
    events = tracked(
        [("a", "SUCCESS", False)],
        [("a", "SUCCESS", False)],
        [("a", "REVERTED", False)],
        [("a", "PENDING", False)],
        [("a", "RUNNING", False)],
    )
    assert events == [
        ("a", "started"), ("a", "done"), ("a", "reverting"), ("a", "reverted"), ("a", "started"),
    ]


@pytest.fixture
def worker(tmp_path):
    with InProcessWorker(flows=[Counting], state_path=tmp_path / "state") as running:
        yield running


def test_a_record_keeps_the_final_steps_of_its_run_in_flow_order(worker, tmp_path):
    request_id = worker.cast("counting", {"marker_dir": str(tmp_path)})
    worker.wait(request_id)
    record = worker.state_store.get(TaskRecord, request_id)
    assert record.steps == [{"task": name, "state": "SUCCESS"} for name in STEPS]


def test_client_wait_reports_each_task_start_end_and_revert_in_order(worker, tmp_path):
    events: list[tuple[str, str]] = []
    request_id = worker.cast("counting", {"marker_dir": str(tmp_path), "fail": True})
    with pytest.raises(FlowFailed):
        worker.client.wait(request_id, timeout=30, on_step=lambda *event: events.append(event))
    forward = [event for name in STEPS[:5] for event in ((name, "started"), (name, "done"))]
    forward += [("step_6", "started"), ("step_6", "failed")]
    reverts = [event for name in reversed(STEPS) for event in ((name, "reverting"), (name, "reverted"))]
    assert events == forward + reverts


def test_progress_of_a_running_flow_comes_from_its_flow_detail(tmp_path):
    kept = {"persistence": {"keep_completed": True}}
    with InProcessWorker(flows=[Counting], state_path=tmp_path / "state", conf_overrides=kept) as worker:
        request_id = worker.cast("counting", {"marker_dir": str(tmp_path)})
        worker.wait(request_id)
        # As if it still ran: the record says processing, without final steps.
        worker.state_store.update(TaskRecord, request_id, state="processing", steps=None)
        progress = worker.worker.runner.progress(request_id)
        assert progress["state"] == "processing"
        assert progress["steps"] == [{"task": name, "state": "SUCCESS"} for name in STEPS]
        assert worker.worker.runner.progress("req-unknown") is None


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_printer_writes_plain_lines_when_piped_and_one_updated_line_on_a_terminal():
    piped = io.StringIO()
    printer = StepPrinter(piped)
    for event in (("a", "started"), ("a", "done"), ("b", "started"), ("b", "failed")):
        printer(*event)
    printer.close()
    lines = piped.getvalue().splitlines()
    assert [line.split()[-2:] for line in lines] == [["a", "started"], ["a", "done"], ["b", "started"], ["b", "failed"]]
    assert "\r" not in piped.getvalue()

    terminal = Terminal()
    printer = StepPrinter(terminal)
    for event in (("a", "started"), ("a", "done"), ("b", "started"), ("b", "failed"), ("a", "reverted")):
        printer(*event)
    printer.close()
    shown = terminal.getvalue()
    assert "\r\033[K" in shown and "running b" in shown
    kept = [line for line in shown.split("\n") if line]
    assert kept[-2].endswith("b                            failed")
    assert kept[-1].rsplit("\r\033[K", 1)[-1].endswith("a                            reverted")
