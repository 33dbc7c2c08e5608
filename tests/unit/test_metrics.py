"""Metrics: what the observer counts and times, the /metrics endpoint, and worker processes
adding up in one exposition."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from taskflow import task
from taskflow.patterns import linear_flow

from keramos.framework import metrics
from keramos.framework.contracts import FlowFactory
from keramos.framework.errors import ConfigError, InvalidEvent
from keramos.framework.records import AmphoraRecord, AmphoraStatus
from keramos.framework.testing import InProcessWorker
from keramos.plugins.health.checks import CheckOutcome
from keramos.plugins.health.metrics import HealthMetrics
from keramos.plugins.state_store.memory import MemoryStateStore
from tests.unit.observability_helpers import scrape
from tests.unit.sample_flows import Counting

REPO = Path(__file__).resolve().parents[2]
STEPS = [f"step_{n}" for n in range(1, 7)]


class Breaks(task.Task):
    def execute(self) -> None:
        pass

    def revert(self, **kwargs) -> None:
        raise RuntimeError("cannot undo")


class Fails(task.Task):
    def execute(self) -> None:
        raise RuntimeError("fails")


class BadRevert(FlowFactory):
    """Fails, and the revert of its first task fails too."""

    name = "bad_revert"
    payload: dict = {}

    def build(self):
        return linear_flow.Flow(self.name).add(Breaks(name="breaks"), Fails(name="fails"))


@pytest.fixture
def observed(tmp_path):
    registry = CollectorRegistry()
    with InProcessWorker(
        flows=[Counting, BadRevert], observers=[metrics.MetricsObserver(registry)]
    ) as worker:
        yield worker, registry


def value(registry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_runs_are_counted_and_timed_by_flow_task_and_outcome(observed, tmp_path):
    worker, registry = observed
    worker.cast_and_wait("counting", {"marker_dir": str(tmp_path)})
    with pytest.raises(RuntimeError):
        worker.cast_and_wait("counting", {"marker_dir": str(tmp_path), "fail": True})
    flow = {"flow": "counting"}
    assert value(registry, "keramos_flows_started_total", **flow) == 2
    assert value(registry, "keramos_flows_succeeded_total", **flow) == 1
    assert value(registry, "keramos_flows_failed_total", **flow) == 1
    assert value(registry, "keramos_flows_reverted_total", **flow) == 1
    assert value(registry, "keramos_flows_in_flight", **flow) == 0
    for outcome in ("success", "failure"):
        assert value(registry, "keramos_flow_duration_seconds_count", **flow, outcome=outcome) == 1
        assert value(registry, "keramos_flow_duration_seconds_sum", **flow, outcome=outcome) > 0
    task_count = "keramos_task_duration_seconds_count"
    assert value(registry, task_count, **flow, task="step_1", outcome="success") == 2
    assert value(registry, task_count, **flow, task="step_6", outcome="failure") == 1
    assert value(registry, task_count, **flow, task="step_1", outcome="reverted") == 1


def test_a_failed_revert_is_counted_and_the_flow_is_not_counted_reverted(observed):
    worker, registry = observed
    with pytest.raises(Exception, match="cannot undo|fails"):
        worker.cast_and_wait("bad_revert", {})
    assert value(registry, "keramos_flows_failed_total", flow="bad_revert") == 1
    assert value(registry, "keramos_flows_reverted_total", flow="bad_revert") is None
    failures = value(registry, "keramos_task_revert_failures_total", flow="bad_revert", task="breaks")
    assert failures == 1


def test_refused_casts_are_counted_by_reason(observed):
    worker, registry = observed
    runner = worker.worker.runner
    for envelope in (
        {"event": "launch_rocket", "request_id": "req-r1", "payload": {}},
        {"event": "counting", "request_id": "req-r2", "payload": {"marker_dir": 3}},
        {"event": "counting", "request_id": "req-r3", "payload": {"marker_dir": 3}},
    ):
        with pytest.raises(InvalidEvent):
            runner.submit(envelope)
    assert value(registry, "keramos_casts_rejected_total", reason="UnknownEvent") == 1
    assert value(registry, "keramos_casts_rejected_total", reason="PayloadError") == 2
    alone = CollectorRegistry()
    metrics.MetricsObserver(alone).rejected("req-r4", "counting", OSError("state store down"))
    assert value(alone, "keramos_casts_rejected_total", reason="not_recorded") == 1


def test_the_endpoint_serves_what_prometheus_parses(observed, tmp_path):
    worker, registry = observed
    worker.cast_and_wait("counting", {"marker_dir": str(tmp_path)})
    conf = worker.conf
    conf.set_override("bind", "127.0.0.1:0", group="metrics")
    with metrics.serving(metrics.listen(conf), registry) as server:
        samples = scrape(server.address)
    assert samples["keramos_flows_succeeded_total"] == {(("flow", "counting"),): 1.0}
    buckets = samples["keramos_flow_duration_seconds_bucket"]
    assert buckets[(("flow", "counting"), ("le", "+Inf"), ("outcome", "success"))] == 1.0


@pytest.mark.parametrize(
    ("bind", "expected"),
    [("9464", "must be host:port"), ("host:port", "must be host:port"), (":80", "must be host:port")],
)
def test_a_bad_bind_is_a_config_error(bind, expected):
    with pytest.raises(ConfigError, match=expected):
        metrics.parse_bind(bind)


def test_a_taken_port_is_one_config_error_naming_it():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = _conf_with_bind(f"127.0.0.1:{port}")
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            metrics.listen(conf)
    assert metrics.listen(_conf_with_bind("")) is None


def _conf_with_bind(bind: str):
    from keramos.framework.config import make_conf

    return make_conf(config_files=[], overrides={"metrics": {"bind": bind}})


WORKER_PROCESS = """
import sys
from keramos.framework import metrics
from keramos.framework.envelope import Job
observer = metrics.process_observer()
job = Job("counting", sys.argv[1], {}, "1.0")
observer.started(job)
if sys.argv[2] == "end":
    observer.succeeded(job, {}, 0.2)
"""


def test_worker_processes_add_up_and_a_dead_one_leaves_the_flows_in_flight(tmp_path):
    directory = str(tmp_path / "multiprocess")
    os.mkdir(directory)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
    for request_id, end in (("req-p1", "end"), ("req-p2", "end"), ("req-p3", "die")):
        subprocess.run(
            [sys.executable, "-c", WORKER_PROCESS, request_id, end],
            check=True, env=env, cwd=REPO, timeout=60, capture_output=True,
        )
    registry = metrics.aggregating_registry(directory)
    assert registry.get_sample_value("keramos_flows_started_total", {"flow": "counting"}) == 3
    assert registry.get_sample_value("keramos_flows_succeeded_total", {"flow": "counting"}) == 2
    count = "keramos_flow_duration_seconds_count"
    assert registry.get_sample_value(count, {"flow": "counting", "outcome": "success"}) == 2
    # The third process died with its flow in flight: a worker killed mid-flow counts no more.
    assert registry.get_sample_value("keramos_flows_in_flight", {"flow": "counting"}) in (None, 0)


def test_the_health_manager_reports_heartbeat_ages_and_failovers():
    store = MemoryStateStore(_conf_with_bind(""))
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    store.save(AmphoraRecord(amphora_id="amp-heard", status=AmphoraStatus.READY,
                             last_heartbeat_at=now - dt.timedelta(seconds=7)))
    store.save(AmphoraRecord(amphora_id="amp-gone", status=AmphoraStatus.DELETED))
    registry = CollectorRegistry()
    health = HealthMetrics(registry, store, clock=now.timestamp)
    health.checked(CheckOutcome(silent=["a", "b"], failed_over=["a", "b"]))
    health.checked(CheckOutcome(silent=["a", "b", "c"], blocked=True))
    age = registry.get_sample_value("keramos_amphora_heartbeat_age_seconds", {"amphora_id": "amp-heard"})
    assert age == 7
    assert registry.get_sample_value(
        "keramos_amphora_heartbeat_age_seconds", {"amphora_id": "amp-gone"}
    ) is None
    assert registry.get_sample_value("keramos_failovers_total") == 2
    assert registry.get_sample_value("keramos_failovers_blocked_total") == 1
