"""Traces: one cast is one span tree (cast -> flow -> tasks -> agent requests), in one process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from taskflow import task
from taskflow.patterns import linear_flow

from keramos.framework import tracing
from keramos.framework.config import make_conf
from keramos.framework.contracts import FlowFactory
from keramos.framework.errors import ConfigError, FlowFailed
from keramos.framework.jobboard.conductor import job_from_meta
from keramos.framework.records import TaskRecord
from keramos.framework.schema import Field
from keramos.framework.testing import InProcessWorker
from tests.unit.observability_helpers import Span, memory_exporter, named, tree
from tests.unit.sample_flows import Explode
from tests.unit.test_agent_rest_driver import ENDPOINT, make_driver, script

REPO = Path(__file__).resolve().parents[2]


class AskAgent(task.Task):
    """Reads the agent's info document through the amphora driver."""

    def __init__(self, amphora, **kwargs) -> None:
        super().__init__(**kwargs)
        self.amphora = amphora

    def execute(self) -> dict:
        return self.amphora.get_info(ENDPOINT)


class AgentProbe(FlowFactory):
    """Asks the agent for its info, then fails if told to."""

    name = "agent_probe"
    payload = {"fail": Field(bool, default=False)}
    result_keys = ("info",)

    def build(self):
        return linear_flow.Flow(self.name).add(
            AskAgent(self.drivers.amphora, name="ask_agent", provides="info"),
            Explode(name="maybe_fail"),
        )


@pytest.fixture
def spans():
    exporter = memory_exporter()
    yield lambda: [Span.of(span) for span in exporter.get_finished_spans()]
    exporter.clear()


@pytest.fixture(params=["serial", "parallel"])
def probe_worker(request, tmp_path):
    driver = make_driver(tmp_path)
    adapter = script(driver, (200, {"api_version": "1.0"}), (200, {"api_version": "1.0"}))
    worker = InProcessWorker(
        flows=[AgentProbe],
        conf_overrides={"worker": {"engine": request.param}},
        observers=[tracing.TracingObserver()],
        amphora=driver,
    )
    with worker:
        yield worker, adapter


def test_one_cast_gives_one_tree_cast_flow_tasks_and_the_agent_request(probe_worker, spans):
    worker, adapter = probe_worker
    request_id = worker.cast("agent_probe", {})
    worker.wait(request_id)
    finished = spans()
    cast = named(finished, "cast agent_probe")
    assert tree(finished, cast.trace_id) == {
        "": ["cast agent_probe"],
        "cast agent_probe": ["flow agent_probe"],
        "flow agent_probe": ["task ask_agent", "task maybe_fail"],
        "task ask_agent": ["agent GET"],
    }
    agent = named(finished, "agent GET")
    traceparent = adapter.requests[0].headers["traceparent"]
    assert traceparent.split("-")[1:3] == [f"{agent.trace_id:032x}", f"{agent.span_id:016x}"]


def test_a_failed_flow_marks_its_span_and_the_failing_task_and_shows_the_reverts(
    probe_worker, spans
):
    worker, _ = probe_worker
    request_id = worker.cast("agent_probe", {"fail": True})
    with pytest.raises(RuntimeError, match="the sixth step exploded"):
        worker.wait(request_id)
    finished = spans()
    flow = named(finished, "flow agent_probe")
    assert flow.failed
    assert named(finished, "task maybe_fail").failed
    assert not named(finished, "task ask_agent").failed
    assert tree(finished, flow.trace_id)["flow agent_probe"] == [
        "revert ask_agent",
        "revert maybe_fail",
        "task ask_agent",
        "task maybe_fail",
    ]


def test_the_trace_context_stays_with_the_accepted_cast_for_a_resume_and_a_conductor(tmp_path):
    with InProcessWorker(flows=[AgentProbe], state_path=tmp_path) as worker:
        runner = worker.worker.runner
        carried = {"traceparent": f"00-{'1' * 32}-{'2' * 16}-01"}
        accepted = runner.take(
            {"event": "agent_probe", "request_id": "req-traced", "payload": {}},
            trace_context=carried,
        )
        assert accepted.job.trace_context == carried
        record = worker.state_store.get(TaskRecord, "req-traced")
        assert runner.accepted_flow(record).job.trace_context == carried
        meta = accepted.flow_detail.meta
        assert job_from_meta(runner, meta).trace_context == carried
        other = {"traceparent": f"00-{'3' * 32}-{'4' * 16}-01"}
        assert job_from_meta(runner, meta, {"trace_context": other}).trace_context == other


def test_only_the_trace_keys_of_a_message_context_are_carried():
    context = {"request_id": "req-1", "traceparent": "00-a-b-01", "tracestate": "k=v", "user": "x"}
    assert tracing.carrier_of(context) == {"traceparent": "00-a-b-01", "tracestate": "k=v"}
    assert tracing.carrier_of(None) == {}
    assert tracing.carrier_of({"traceparent": 7}) == {}


def test_tracing_on_without_opentelemetry_is_one_clear_line_and_keramos_runs_without_it(tmp_path):
    config = tmp_path / "keramos.conf"
    config.write_text(f"[DEFAULT]\nstate_path = {tmp_path}\n[tracing]\nenabled = true\n")
    probe = textwrap.dedent(
        f"""
        import sys
        for name in ("opentelemetry", "opentelemetry.sdk"):
            sys.modules[name] = None
        from keramos.framework import tracing
        from keramos.framework.client import KeramosClient  # importable without it
        from keramos.framework.service import main
        with tracing.outgoing("cast x") as out:
            assert out.headers == {{}}
        sys.exit(main(["--config-file", {str(config)!r}]))
        """
    )
    ran = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert ran.returncode == 2, ran.stderr
    assert ran.stderr.strip().splitlines()[-1] == (
        "keramos-worker: cannot start: [tracing] enabled needs OpenTelemetry, which is not "
        "installed: pip install 'keramos[tracing]'"
    )
    assert "Traceback" not in ran.stderr


def test_setup_does_nothing_when_tracing_is_off():
    conf = make_conf(config_files=[])
    assert tracing.setup(conf) is None
    tracing.check(conf)


def test_a_flow_run_without_a_caster_trace_is_the_root_of_its_own_trace(spans, tmp_path):
    driver = make_driver(tmp_path)
    script(driver, (200, {}))
    with InProcessWorker(
        flows=[AgentProbe], observers=[tracing.TracingObserver()], amphora=driver
    ) as worker:
        with pytest.raises(FlowFailed):
            worker.worker.runner.submit(
                {"event": "agent_probe", "request_id": "req-untraced", "payload": {"fail": True}}
            )
    finished = spans()
    flow = named(finished, "flow agent_probe")
    assert flow.parent_id is None
    assert tree(finished, flow.trace_id)[""] == ["flow agent_probe"]


def test_a_tracing_observer_needs_opentelemetry_to_be_built(monkeypatch):
    monkeypatch.setattr(tracing, "trace", None)
    with pytest.raises(ConfigError, match="pip install 'keramos\\[tracing\\]'"):
        tracing.TracingObserver()
