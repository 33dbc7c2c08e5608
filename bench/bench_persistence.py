"""Benchmark: taskflow flows/s with keramos' LeanSQLBackend against the alternatives.

Each row runs a six-task no-op flow through taskflow's serial engine, one
durable save per state change, on SQLite files in a temporary directory:

1. LeanSQLBackend (synchronous=normal) vs taskflow's stock SQLAlchemy backend;
2. LeanSQLBackend (synchronous=full) vs the stock backend;
3. LeanSQLBackend (synchronous=normal) vs taskflow without persistence.

Run ``python bench/bench_persistence.py [DURATION_SECONDS]``; progress goes to
stderr, the table to stdout. The stock backend needs ``alembic`` installed.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskflow import engines, task
from taskflow.patterns import linear_flow
from taskflow.persistence import backends, models

from keramos.framework.persistence import get_backend

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_table, rate, row  # noqa: E402

MIN_FLOWS = 5


class Noop(task.Task):
    """A task that does nothing."""

    def execute(self) -> None:
        """Do nothing."""


def six_noops() -> linear_flow.Flow:
    """The benchmark flow: six tasks that do nothing."""
    return linear_flow.Flow("bench").add(*[Noop(name=f"noop-{i}") for i in range(6)])


def flows_per_second(label: str, backend: Any, duration: float) -> float:
    """Raw taskflow (serial engine) flows per second over ``duration`` seconds on ``backend``
    (``None``: no persistence), at least MIN_FLOWS, after a warm-up."""
    flow = six_noops()

    def run_one() -> None:
        book = models.LogBook("bench") if backend is not None else None
        engines.load(flow, backend=backend, book=book, engine="serial").run()

    return rate(label, run_one, duration, MIN_FLOWS)


def _lean(path: Path, synchronous: str) -> Callable[[float], float]:
    def measure(duration: float) -> float:
        backend = get_backend(f"sqlite:///{path}", synchronous=synchronous)
        try:
            return flows_per_second(f"keramos LeanSQLBackend synchronous={synchronous}", backend, duration)
        finally:
            backend.close()

    return measure


def stock_backend(path: Path) -> Any:
    """taskflow's stock SQLAlchemy backend on a SQLite file, its tables created."""
    backend = backends.fetch({"connection": f"sqlite:///{path}"})
    with contextlib.closing(backend.get_connection()) as conn:
        conn.upgrade()
    return backend


def _stock(path: Path) -> Callable[[float], float]:
    def measure(duration: float) -> float:
        backend = stock_backend(path)
        try:
            return flows_per_second("taskflow stock SQLAlchemy backend", backend, duration)
        finally:
            backend.close()

    return measure


def rows(duration: float = 3.0) -> list[dict]:
    """Measure and return the benchmark rows.

    Each row has ``name``, ``keramos`` and ``raw`` (flows/s of keramos and of
    the alternative), ``unit``, ``ratio`` (keramos / raw) and ``goal``.
    """
    with tempfile.TemporaryDirectory(prefix="keramos-bench-") as tmp:
        tmp_dir = Path(tmp)
        print("measuring (serial engine, six no-op tasks, SQLite files)", file=sys.stderr)
        normal = _lean(tmp_dir / "lean-normal.db", "normal")(duration)
        full = _lean(tmp_dir / "lean-full.db", "full")(duration)
        stock = _stock(tmp_dir / "stock.db")(duration)
        raw = flows_per_second("taskflow without persistence", None, duration)
    return [
        row("backend: lean normal vs taskflow SQLAlchemy backend", normal, stock, "flows/s", ">= 25x"),
        row("backend: lean full vs taskflow SQLAlchemy backend", full, stock, "flows/s", ">= 25x"),
        row("backend: lean normal vs taskflow without persistence", normal, raw, "flows/s", ">= 0.8"),
    ]


if __name__ == "__main__":
    print(format_table(rows(float(sys.argv[1]) if len(sys.argv) > 1 else 3.0)))
