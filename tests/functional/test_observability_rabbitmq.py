"""A keramos-worker of two processes with metrics and tracing on, over the real RabbitMQ: its
/metrics endpoint scraped and parsed as Prometheus does, its spans received over OTLP."""

from __future__ import annotations

import re
import signal
import socket
from pathlib import Path

import pytest

from keramos.framework.errors import FlowFailed
from keramos.framework.records import TaskState
from tests.functional.agent_helpers import free_port, http_backend
from tests.functional.lifecycle_helpers import BODY, LIFECYCLE_DRIVERS, description, lifecycle_settings
from tests.unit.observability_helpers import OtlpCollector, Span, eventually, memory_exporter, named, scrape, tree


def test_a_worker_with_metrics_and_tracing_on_counts_times_and_traces_each_cast(
    worker_process, monkeypatch
):
    exporter = memory_exporter()
    collector = OtlpCollector()
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    address = ("127.0.0.1", free_port())
    worker = worker_process(
        {
            "worker": {"workers": 2},
            "metrics": {"bind": f"{address[0]}:{address[1]}"},
            "tracing": {"enabled": True, "otlp_endpoint": collector.url},
        }
    )
    with worker.client() as client:
        succeeding = client.create_amphora("obs-amp-1", "img")
        client.wait(succeeding, timeout=60)
        failing = client.create_amphora("obs-amp-1", "img")
        with pytest.raises(FlowFailed, match="already exists"):
            client.wait(failing, timeout=60)

    flow = (("flow", "create_amphora"),)

    def counted():
        samples = scrape(address)
        assert samples["keramos_flows_started_total"][flow] == 2
        assert samples["keramos_flows_succeeded_total"][flow] == 1
        assert samples["keramos_flows_failed_total"][flow] == 1
        assert samples["keramos_flows_reverted_total"][flow] == 1
        assert samples["keramos_flows_in_flight"][flow] == 0
        # The duration histogram is written a moment after the counters.
        durations = samples["keramos_flow_duration_seconds_count"]
        assert durations == {(*flow, ("outcome", "success")): 1, (*flow, ("outcome", "failure")): 1}
        return samples

    samples = eventually(counted)
    assert samples["keramos_flow_duration_seconds_bucket"][(*flow, ("le", "+Inf"), ("outcome", "success"))] == 1
    tasks_run = {
        dict(labels)["task"]
        for labels, count in samples["keramos_task_duration_seconds_count"].items()
        if dict(labels)["outcome"] == "success" and count >= 1
    }
    assert len(tasks_run) >= 3

    casts = {
        span.attributes["keramos.request_id"]: Span.of(span)
        for span in exporter.get_finished_spans()
        if span.name == "cast create_amphora"
    }

    def traced(request_id: str) -> tuple[list[Span], int]:
        trace_id = casts[request_id].trace_id
        spans = [casts[request_id], *collector.spans]
        named([span for span in spans if span.trace_id == trace_id], "flow create_amphora")
        return spans, trace_id

    spans, trace_id = eventually(lambda: traced(succeeding))
    assert tree(spans, trace_id) == {
        "": ["cast create_amphora"],
        "cast create_amphora": ["flow create_amphora"],
        "flow create_amphora": sorted(f"task {name}" for name in tasks_run),
    }

    spans, trace_id = eventually(lambda: traced(failing))
    shape = tree(spans, trace_id)
    assert shape["cast create_amphora"] == ["flow create_amphora"]
    under_flow = shape["flow create_amphora"]
    assert any(name.startswith("revert ") for name in under_flow)
    in_trace = [span for span in spans if span.trace_id == trace_id]
    assert named(in_trace, "flow create_amphora").failed
    assert any(span.failed and span.name.startswith("task ") for span in in_trace)

    directory = re.search(r"write their metrics under (\S+)", worker.log()).group(1)
    assert Path(directory).is_dir()
    assert worker.stop(signal.SIGTERM) == 0
    assert not Path(directory).exists()
    assert "Traceback" not in worker.log()


def test_a_metrics_port_in_use_stops_the_worker_with_one_line(worker_process):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        bind = "127.0.0.1:%d" % taken.getsockname()[1]
        worker = worker_process({"metrics": {"bind": bind}}, ready=False)
        assert worker.process.wait(60) == 2
    assert f"keramos-worker: cannot start: [metrics] bind: cannot listen on {bind}" in worker.log()
    assert "Traceback" not in worker.log()


def test_the_agent_requests_of_a_real_amphora_are_spans_of_the_tasks_that_made_them(
    worker_process, tmp_path, monkeypatch
):
    exporter = memory_exporter()
    collector = OtlpCollector()
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    settings = lifecycle_settings(str(tmp_path))
    settings["drivers"] = dict(LIFECYCLE_DRIVERS)
    settings["amphora"] = {"require_signed_images": False, "active_timeout": 60.0, "agent_timeout": 60.0}
    settings["tracing"] = {"enabled": True, "otlp_endpoint": collector.url}
    worker = worker_process(settings)
    listener_port = free_port()
    with http_backend(BODY) as backend_port, worker.client() as client:
        lb = {"lb_id": "lb-traced", **description(listener_port, backend_port)}
        request_id = client.cast("create_amphora", {"amphora_id": "traced-1", "image_id": "img", "lb": lb})
        created = client.wait(request_id, timeout=120)
        try:
            assert created["state"] == TaskState.SUCCESS
        finally:
            client.wait(client.cast("delete_amphora", {"amphora_id": "traced-1"}), timeout=60)
    cast = Span.of(next(span for span in exporter.get_finished_spans()
                        if span.attributes["keramos.request_id"] == request_id))

    def traced() -> dict[str, list[str]]:
        shape = tree([cast, *collector.spans], cast.trace_id)
        assert "flow create_amphora" in shape
        return shape

    shape = eventually(traced)
    assert shape["cast create_amphora"] == ["flow create_amphora"]
    asking = {parent for parent, children in shape.items() if any(c.startswith("agent ") for c in children)}
    assert asking, shape
    assert all(parent.startswith("task ") for parent in asking), shape
    assert asking <= set(shape["flow create_amphora"])
