"""Jobboard mode end to end: conductor processes on two hosts, a private Redis, PostgreSQL.

Every conductor is a subprocess (``jobboard_worker.py``) sharing one PostgreSQL database (state
store and flow persistence, one database per module) and a private ``redis-server``. Flows are
``ledger`` flows, whose steps note their start and end in a ledger file, so that re-runs show.
Under ``CI=true`` a missing redis-server or PostgreSQL fails these tests instead of skipping.
"""

from __future__ import annotations

import collections
import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from keramos.framework.jobboard import JobBoardDispatcher, jobboard_health
from keramos.framework.records import TaskRecord, TaskState
from tests.functional.jobboard_helpers import (
    BIN,
    ConductorProcess,
    free_port,
    ledger_lines,
    wait_for,
    write_config,
)
from tests.functional.jobboard_worker import STEPS, make_runner

CLAIM_TIMEOUT = 2.0
STEP_NAMES = [f"step_{index}" for index in range(1, STEPS + 1)]


class Deployment:
    """Config files for a test's hosts, the intake that posts, and the conductors started."""

    def __init__(self, root: Path, pg_url: str, redis_url: str, **jobboard: object) -> None:
        self.root = root
        self.pg_url = pg_url
        self.redis_url = redis_url
        self.name = f"kt-{uuid.uuid4().hex[:8]}"
        self.jobboard = {
            "enabled": True,
            "url": redis_url,
            "name": self.name,
            "claim_timeout": CLAIM_TIMEOUT,
            "poll_interval": 0.1,
            "max_backoff": 1.0,
            "connect_timeout": 3,
            **jobboard,
        }
        self.ledger = root / "ledger"
        self.conductors: list[ConductorProcess] = []
        self.intake = make_runner(str(self.config("intake")), observers=[])
        self.dispatcher = JobBoardDispatcher(self.intake.conf, self.intake)

    def config(self, host: str, **jobboard: object) -> Path:
        directory = self.root / host
        directory.mkdir(exist_ok=True)
        return write_config(
            directory / "keramos.conf",
            {
                "DEFAULT": {"host": host, "state_path": directory},
                "drivers": {"state_store": "sqlalchemy", "flows": "delete_amphora"},
                "state_store": {"connection": self.pg_url},
                "persistence": {"connection": self.pg_url},
                "jobboard": {**self.jobboard, **jobboard},
            },
        )

    def conductor(self, host: str, *, block_at: str | None = None, **jobboard) -> ConductorProcess:
        process = ConductorProcess(
            self.root / host, self.config(host, **jobboard), block_at=block_at
        ).start()
        self.conductors.append(process)
        return process

    def post(self, *, pause: float = 0.0, poison: bool = False) -> str:
        request_id = f"req-{uuid.uuid4()}"
        accepted = self.intake.take(
            {
                "event": "ledger",
                "request_id": request_id,
                "payload": {"ledger": str(self.ledger), "pause": pause, "poison": poison},
            }
        )
        assert accepted is not None
        self.dispatcher.post(accepted)
        return request_id

    def record(self, request_id: str) -> TaskRecord:
        return self.intake.drivers.state_store.get(TaskRecord, request_id)

    def ended(self, request_ids: list[str]) -> bool:
        return all(self.record(rid).state in TaskState.TERMINAL for rid in request_ids)

    def wait_ended(self, request_ids: list[str], timeout: float = 60) -> None:
        try:
            wait_for(lambda: self.ended(request_ids), timeout, f"{len(request_ids)} jobs to end",
                     interval=0.2)
        except AssertionError:
            states = {rid: self.record(rid).state for rid in request_ids}
            logs = "\n".join(f"--- {c.directory.name}\n{c.log()[-3000:]}" for c in self.conductors)
            raise AssertionError(f"not all jobs ended: {states}\n{logs}") from None

    def cli(self, *args: str, host: str = "intake", timeout: float = 60):
        return subprocess.run(
            [str(BIN / "keramos"), "--config-file", str(self.root / host / "keramos.conf"),
             "jobs", *args],
            capture_output=True, text=True, timeout=timeout,
        )

    def close(self) -> None:
        for conductor in self.conductors:
            conductor.stop(timeout=15)
        self.dispatcher.close()
        self.intake.close()
        self.intake.drivers.close()


@pytest.fixture
def deployment(tmp_path, pg_url, redis_server):
    made = []

    def make(**jobboard: object) -> Deployment:
        made.append(Deployment(tmp_path, pg_url, redis_server.url, **jobboard))
        return made[-1]

    yield make
    for each in made:
        each.close()


def done_by(ledger: Path) -> dict[tuple[str, str], list[str]]:
    """(request_id, step) -> hosts that finished it."""
    found = collections.defaultdict(list)
    for what, request_id, step, host in ledger_lines(ledger):
        if what == "done":
            found[(request_id, step)].append(host)
    return found


def started_by(ledger: Path) -> dict[tuple[str, str], list[str]]:
    """(request_id, step) -> hosts that started it."""
    found = collections.defaultdict(list)
    for what, request_id, step, host in ledger_lines(ledger):
        if what == "start":
            found[(request_id, step)].append(host)
    return found


def test_a_killed_workers_jobs_resume_elsewhere_from_their_last_completed_task(deployment):
    setup = deployment(conductor_threads=4)
    host_a = setup.conductor("host-a", block_at="step_3")
    stranded = [setup.post() for _ in range(4)]
    wait_for(lambda: all((setup.root / f"blocked-{rid}").exists() for rid in stranded), 30,
             "host-a to reach step_3 of every job")

    listing = setup.cli("list")
    assert listing.returncode == 0, listing.stderr
    for request_id in stranded:
        line = next(line for line in listing.stdout.splitlines() if request_id in line)
        assert "CLAIMED" in line and "host-a." in line and "step_2" in line
    shown = setup.cli("show", stranded[0], "--json")
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert view["state"] == "CLAIMED" and view["owner"].startswith("host-a.")
    assert [task["state"] for task in view["tasks"]] == ["SUCCESS", "SUCCESS", "RUNNING", "PENDING"]
    assert len(view["attempts"]) == 1 and view["last_completed"] == "step_2"

    setup.conductor("host-b")
    later = [setup.post(pause=0.05) for _ in range(4)]
    host_a.kill()
    killed_at = time.monotonic()
    setup.wait_ended(stranded + later)
    assert time.monotonic() - killed_at >= CLAIM_TIMEOUT * 0.5

    for request_id in stranded + later:
        assert setup.record(request_id).state == TaskState.SUCCESS, setup.record(request_id)
    done, started = done_by(setup.ledger), started_by(setup.ledger)
    for request_id in stranded:
        assert done[(request_id, "step_1")] == ["host-a"]
        assert done[(request_id, "step_2")] == ["host-a"]
        assert started[(request_id, "step_3")] == ["host-a", "host-b"]
        assert done[(request_id, "step_3")] == ["host-b"]
        assert done[(request_id, "step_4")] == ["host-b"]
    for request_id in later:
        assert [len(done[(request_id, step)]) for step in STEP_NAMES] == [1] * STEPS

    listing = setup.cli("list")
    assert listing.returncode == 0 and not any(rid in listing.stdout for rid in stranded)


def test_a_poison_job_is_parked_after_max_attempts_and_the_others_finish(deployment):
    setup = deployment(max_attempts=3)
    conductors = [setup.conductor("host-a"), setup.conductor("host-b")]
    poison = setup.post(poison=True)
    healthy = [setup.post(pause=0.05) for _ in range(6)]

    def parked_or_restart() -> bool:
        for conductor in conductors:
            if not conductor.alive:
                conductor.start()
        return setup.record(poison).state == TaskState.FAILURE

    wait_for(parked_or_restart, 90, "the poison job to be parked", interval=0.2)
    setup.wait_ended(healthy)
    assert all(setup.record(rid).state == TaskState.SUCCESS for rid in healthy)

    record = setup.record(poison)
    assert record.error_type == "JobParked"
    assert "parked after 3 attempt(s)" in record.message and "died" in record.message
    started = started_by(setup.ledger)
    assert len(started[(poison, "step_2")]) == 3
    assert len(started[(poison, "step_1")]) == 1

    listing = setup.cli("list")
    assert listing.returncode == 0, listing.stderr
    line = next(line for line in listing.stdout.splitlines() if poison in line)
    assert "PARKED" in line and " 3 " in line
    shown = setup.cli("show", poison)
    assert shown.returncode == 0, shown.stderr
    assert "PARKED" in shown.stdout and "parked after 3 attempt(s)" in shown.stdout
    assert "step_1" in shown.stdout


def test_conductors_ride_out_a_redis_restart(deployment, redis_server):
    setup = deployment(conductor_threads=2)
    conductor = setup.conductor("host-a")
    first = [setup.post(pause=0.2) for _ in range(6)]
    wait_for(lambda: ledger_lines(setup.ledger), 20, "the first job to start")

    redis_server.stop()
    ok, detail = jobboard_health(setup.intake.conf)
    assert not ok and "cannot reach" in detail and "\n" not in detail
    wait_for(lambda: conductor.health().startswith("False"), 10, "the conductor to see it")
    time.sleep(1.0)
    redis_server.start()

    setup.wait_ended(first)
    later = [setup.post() for _ in range(3)]
    setup.wait_ended(later)
    assert all(setup.record(rid).state == TaskState.SUCCESS for rid in first + later)
    assert jobboard_health(setup.intake.conf)[0]
    wait_for(lambda: conductor.health().startswith("True"), 10, "the conductor to recover")
    assert conductor.alive
    done = done_by(setup.ledger)
    for request_id in first + later:
        assert [len(done[(request_id, step)]) for step in STEP_NAMES] == [1] * STEPS


def test_jobs_cli_fails_in_one_line_when_the_board_is_unreachable(deployment):
    setup = deployment()
    config = setup.config("nowhere", url=f"redis://127.0.0.1:{free_port()}/0", connect_timeout=1)
    started = time.monotonic()
    result = subprocess.run(
        [str(BIN / "keramos"), "--config-file", str(config), "jobs", "list"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert time.monotonic() - started < 20
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the redis board" in lines[0], result.stderr


def test_a_conductor_reports_to_the_runners_observers_like_a_direct_run(deployment):
    from keramos.framework.jobboard import Conductor
    from keramos.framework.testing import RecordingObserver

    setup = deployment()
    recorder = RecordingObserver()
    runner = make_runner(str(setup.config("host-c")), observers=[recorder])
    conductor = Conductor(runner.conf, runner).start()
    try:
        direct = f"req-{uuid.uuid4()}"
        runner.submit({"event": "ledger", "request_id": direct,
                       "payload": {"ledger": str(setup.ledger)}})
        posted = setup.post()
        setup.wait_ended([posted])
        wait_for(lambda: recorder.types(posted)[-1:] == ["keramos.ledger.end"], 10,
                 "the end event")
    finally:
        assert conductor.stop(10)
        runner.close()
        runner.drivers.close()
    expected = ["keramos.ledger.start", "keramos.ledger.end"]
    assert recorder.types(posted) == recorder.types(direct) == expected
    assert setup.record(posted).state == TaskState.SUCCESS


def test_waiting_jobs_are_counted_and_a_job_carries_its_casts_trace_to_the_conductor(deployment):
    from prometheus_client import CollectorRegistry

    from keramos.framework.jobboard import Conductor
    from keramos.framework.jobboard.board import count_waiting
    from keramos.framework.metrics import JobsWaiting
    from keramos.framework.observers import RunObserver

    class TraceContexts(RunObserver):
        def __init__(self) -> None:
            self.seen: dict[str, dict] = {}

        def started(self, job) -> None:
            self.seen[job.request_id] = dict(job.trace_context)

    setup = deployment()
    registry = CollectorRegistry()
    registry.register(JobsWaiting(lambda: count_waiting(setup.intake.conf)))
    assert registry.get_sample_value("keramos_jobboard_jobs_waiting") == 0
    carried = {"traceparent": f"00-{'a' * 32}-{'b' * 16}-01"}
    request_id = f"req-{uuid.uuid4()}"
    accepted = setup.intake.take(
        {"event": "ledger", "request_id": request_id, "payload": {"ledger": str(setup.ledger)}},
        trace_context=carried,
    )
    setup.dispatcher.post(accepted)
    setup.post()
    assert registry.get_sample_value("keramos_jobboard_jobs_waiting") == 2
    contexts = TraceContexts()
    runner = make_runner(str(setup.config("host-t")), observers=[contexts])
    conductor = Conductor(runner.conf, runner).start()
    try:
        setup.wait_ended([request_id])
    finally:
        assert conductor.stop(10)
        runner.close()
        runner.drivers.close()
    assert contexts.seen[request_id] == carried
    assert registry.get_sample_value("keramos_jobboard_jobs_waiting") == 0
    unreachable = CollectorRegistry()
    unreachable.register(JobsWaiting(lambda: None))
    assert unreachable.get_sample_value("keramos_jobboard_jobs_waiting") is None
