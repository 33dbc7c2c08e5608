"""Benchmark (issue #13): the runner's flows/s with metrics and tracing on, against off.

The six-task no-op flow of ``bench_runner`` on the serial engine, without persistence (where an
observer's cost shows most), run by two runners built alike except for their observers: none,
or the Prometheus metrics observer plus the tracing observer exporting every span to an
in-memory exporter through the batch processor a worker uses. The two run one flow each in
turn, in the same run, so that a change of the machine's load hits both alike; each one's
flows/s is its flows over the time they took. Goal >= 0.95x. A second row counts flows per
CPU second of this process, which a machine busy with other work disturbs less.

``python bench/bench_observability.py [DURATION_SECONDS]``
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from keramos.framework.metrics import MetricsObserver
from keramos.framework.runner import FlowRunner
from keramos.framework.tracing import TracingObserver

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_runner import keramos_runner  # noqa: E402
from common import format_table, row  # noqa: E402


def observed_runner(state: Path, exporter: InMemorySpanExporter) -> tuple[FlowRunner, TracerProvider]:
    """A volatile runner whose observers are the metrics and the tracing ones, and the tracer
    provider exporting its spans."""
    runner = keramos_runner(state, durable=False)
    provider = TracerProvider()
    # As a worker exports: spans queued as they end, exported by the processor's thread.
    provider.add_span_processor(BatchSpanProcessor(exporter))
    runner.add_observer(MetricsObserver(CollectorRegistry()))
    runner.add_observer(TracingObserver(provider))
    return runner, provider


def paired_rates(
    runs: dict[str, Callable[[], object]], duration: float
) -> tuple[dict[str, float], dict[str, float]]:
    """Flows per second and flows per CPU second of each of ``runs``, run one flow each in turn
    (the order swapped every round) for ``duration`` seconds: a change of the machine's load
    hits every one alike. CPU time (this process's) leaves out the time other processes had the
    cores: on a loaded machine it is the steadier of the two."""
    wall = dict.fromkeys(runs, 0.0)
    cpu = dict.fromkeys(runs, 0.0)
    order = list(runs)
    for run in runs.values():
        run()
    count = 0
    start = time.perf_counter()
    while count < 5 or time.perf_counter() - start < duration:
        for label in order:
            began, began_cpu = time.perf_counter(), time.process_time()
            runs[label]()
            wall[label] += time.perf_counter() - began
            cpu[label] += time.process_time() - began_cpu
        order.reverse()
        count += 1
    for label in runs:
        print(f"  {label}: {count} in {wall[label]:.1f}s ({cpu[label]:.1f}s CPU), "
              f"{count / wall[label]:.1f}/s, {count / cpu[label]:.1f}/CPU s", file=sys.stderr)
    return (
        {label: count / seconds for label, seconds in wall.items()},
        {label: count / seconds for label, seconds in cpu.items()},
    )


def rows(duration: float = 6.0) -> list[dict]:
    """Measure flows/s with observability off and on, alternating flow by flow."""
    exporter = InMemorySpanExporter()
    with tempfile.TemporaryDirectory(prefix="keramos-bench-") as tmp:
        print("observability: six no-op tasks, serial engine, no persistence", file=sys.stderr)
        observed, provider = observed_runner(Path(tmp, "on"), exporter)
        runners = {
            "observers off": keramos_runner(Path(tmp, "off"), durable=False),
            "metrics and tracing on": observed,
        }
        ids = itertools.count()

        def submit(runner: FlowRunner) -> Callable[[], object]:
            def run_one() -> object:
                return runner.submit(
                    {"event": "six_noops", "request_id": f"req-{next(ids)}", "payload": {}}
                )

            return run_one

        try:
            rates, cpu_rates = paired_rates(
                {label: submit(runner) for label, runner in runners.items()}, duration
            )
        finally:
            for runner in runners.values():
                runner.close()
                runner.drivers.close()
            provider.force_flush()
            provider.shutdown()
    on, off = "metrics and tracing on", "observers off"
    print(f"  {len(exporter.get_finished_spans())} spans exported in memory", file=sys.stderr)
    return [
        row("observability: metrics + tracing on vs off", rates[on], rates[off], "flows/s", ">= 0.95"),
        row("observability: the same, per CPU second", cpu_rates[on], cpu_rates[off], "flows/CPU s",
            ">= 0.95"),
    ]


if __name__ == "__main__":
    print(format_table(rows(float(sys.argv[1]) if len(sys.argv) > 1 else 6.0)))
