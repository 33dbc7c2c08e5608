"""Benchmark (b) and (c) of the foundation: a six-task no-op flow through Keramos's runner.

(b) without persistence, against raw taskflow's serial engine (goal >= 0.9);
(c) with durable persistence on SQLite (Keramos's lean backend, synchronous=normal and full),
    against raw taskflow with its stock SQLAlchemy backend (goal >= 25x).

``python bench/bench_runner.py [DURATION_SECONDS]``
"""

from __future__ import annotations

import itertools
import sys
import tempfile
from pathlib import Path

from taskflow.patterns import linear_flow

from keramos.framework import loader
from keramos.framework.config import make_conf
from keramos.framework.contracts import FlowFactory
from keramos.framework.runner import FlowRunner
from keramos.framework.service import persistence_backend

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_persistence import flows_per_second, six_noops, stock_backend  # noqa: E402
from common import format_table, rate, row  # noqa: E402


class SixNoops(FlowFactory):
    """The benchmark flow as a Keramos flow.

    ``reusable`` as Keramos's own flows are: built once, like the one flow the raw taskflow
    baseline loads into every engine, so the rows compare running flows, not building them.
    """

    name = "six_noops"
    reusable = True

    def build(self) -> linear_flow.Flow:
        return six_noops()


def keramos_runner(state: Path, *, durable: bool, synchronous: str = "normal") -> FlowRunner:
    conf = make_conf(
        config_files=[],
        overrides={
            "DEFAULT": {"state_path": str(state)},
            "drivers": {"state_store": "noop", "flows": ["create_amphora"]},
            "persistence": {"enabled": durable, "synchronous": synchronous},
        },
    )
    drivers = loader.load_drivers(conf)
    flows = loader.load_flows(conf, drivers, extra=[SixNoops])
    # No observer: what is measured is the runner, not a notification transport or the log.
    return FlowRunner(conf, drivers, flows, observers=[], backend=persistence_backend(conf))


def runner_rate(label: str, runner: FlowRunner, duration: float) -> float:
    ids = itertools.count()

    def run_one() -> None:
        runner.submit({"event": "six_noops", "request_id": f"req-{next(ids)}", "payload": {}})

    try:
        return rate(label, run_one, duration)
    finally:
        runner.close()
        runner.drivers.close()


def rows(duration: float = 3.0) -> list[dict]:
    """Measure (b) and (c); see the module docstring."""
    with tempfile.TemporaryDirectory(prefix="keramos-bench-") as tmp:
        tmp_path = Path(tmp)
        print("runner: six no-op tasks, serial engine", file=sys.stderr)
        raw = flows_per_second("raw taskflow, no persistence", None, duration)
        volatile = runner_rate(
            "keramos runner, no persistence", keramos_runner(tmp_path / "v", durable=False), duration
        )
        stock = stock_backend(tmp_path / "stock.sqlite")
        try:
            stock_rate = flows_per_second("raw taskflow, stock SQLAlchemy backend", stock, duration)
        finally:
            stock.close()
        normal = runner_rate(
            "keramos runner, durable, synchronous=normal",
            keramos_runner(tmp_path / "n", durable=True),
            duration,
        )
        full = runner_rate(
            "keramos runner, durable, synchronous=full",
            keramos_runner(tmp_path / "f", durable=True, synchronous="full"),
            duration,
        )
    return [
        row("(b) runner, no persistence vs raw taskflow", volatile, raw, "flows/s", ">= 0.9"),
        row("(c) durable SQLite normal vs taskflow stock backend", normal, stock_rate, "flows/s",
            ">= 25x"),
        row("(c) durable SQLite full vs taskflow stock backend", full, stock_rate, "flows/s",
            ">= 25x"),
        row("(c) durable SQLite normal vs raw taskflow, no persistence", normal, raw, "flows/s",
            "info"),
    ]


if __name__ == "__main__":
    print(format_table(rows(float(sys.argv[1]) if len(sys.argv) > 1 else 3.0)))
