"""Benchmark (issue #13): the runner's flows/s with metrics and tracing on, against off.

The six-task no-op flow of ``bench_runner`` on the serial engine, without persistence (where an
observer's cost shows most), run by two runners built alike except for their observers: none,
or the Prometheus metrics observer plus the tracing observer exporting every span to an
in-memory exporter. The two are measured in alternating rounds of the same run, so that a
change of the machine's load hits both; the best round of each is compared. Goal >= 0.95x.

``python bench/bench_observability.py [DURATION_SECONDS]``
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from keramos.framework.metrics import MetricsObserver
from keramos.framework.tracing import TracingObserver

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_runner import keramos_runner, runner_rate  # noqa: E402
from common import format_table, row  # noqa: E402


def observed_runner(state: Path, exporter: InMemorySpanExporter):
    """A volatile runner whose observers are the metrics and the tracing ones."""
    runner = keramos_runner(state, durable=False)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    runner.add_observer(MetricsObserver(CollectorRegistry()))
    runner.add_observer(TracingObserver(provider))
    return runner


def rows(duration: float = 3.0, rounds: int = 3) -> list[dict]:
    """Measure flows/s with observability off and on, ``rounds`` alternating rounds each."""
    off, on = [], []
    exporter = InMemorySpanExporter()
    with tempfile.TemporaryDirectory(prefix="keramos-bench-") as tmp:
        print("observability: six no-op tasks, serial engine, no persistence", file=sys.stderr)
        for round_number in range(rounds):
            state = Path(tmp, str(round_number))
            off.append(runner_rate("runner, observers off", keramos_runner(state / "off", durable=False),
                                   duration / rounds))
            on.append(runner_rate("runner, metrics and tracing on",
                                  observed_runner(state / "on", exporter), duration / rounds))
            spans = len(exporter.get_finished_spans())
            exporter.clear()
            print(f"  ({spans} spans exported in memory this round)", file=sys.stderr)
    return [
        row("observability: metrics + tracing on vs off", max(on), max(off), "flows/s", ">= 0.95"),
    ]


if __name__ == "__main__":
    print(format_table(rows(float(sys.argv[1]) if len(sys.argv) > 1 else 3.0)))
