"""Jobboard mode against the direct runner: the same six-task no-op flow, the same run.

Both take every cast with :meth:`FlowRunner.take` (task record and durable flow detail, SQLite
synchronous=normal) and run it on 4 threads: directly (a thread pool calling
:meth:`FlowRunner.run`, as the RPC endpoint does), or through a private ``redis-server``
(:class:`JobBoardDispatcher` posts, an in-process :class:`Conductor` with 4 threads claims and
runs). Measured:

- flows/s from the first take to the last flow's end (goal >= 0.8x the direct runner);
- cast -> first task started, p50 and p99, when ``backlog`` casts arrive at once.

``python bench/bench_jobboard.py [FLOWS [BACKLOG]]``
"""

from __future__ import annotations

import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from keramos.framework import loader
from keramos.framework.config import make_conf
from keramos.framework.envelope import Job
from keramos.framework.jobboard import Conductor, JobBoardDispatcher
from keramos.framework.observers import RunObserver
from keramos.framework.runner import Accepted, FlowRunner
from keramos.framework.service import persistence_backend

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_runner import SixNoops  # noqa: E402
from common import format_table, row  # noqa: E402

THREADS = 4


class Timings(RunObserver):
    """When each job's first task started and when its flow ended."""

    def __init__(self) -> None:
        self.first_task: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self._lock = threading.Lock()
        self.all_ended = threading.Event()
        self.expected = 0

    def task_state_changed(self, job: Job, task_name: str, state: str, details: Any) -> None:
        if state == "RUNNING":
            self.first_task.setdefault(job.request_id, time.perf_counter())

    def succeeded(self, job: Job, result: dict[str, Any], duration: float) -> None:
        with self._lock:
            self.ended[job.request_id] = time.perf_counter()
            if len(self.ended) >= self.expected:
                self.all_ended.set()

    def expect(self, count: int) -> None:
        with self._lock:
            self.first_task.clear()
            self.ended.clear()
            self.expected = count
            self.all_ended.clear()


class RedisServer:
    """A private redis-server for the benchmark (never the shared one)."""

    def __init__(self, directory: Path) -> None:
        program = shutil.which("redis-server")
        if program is None:
            raise SystemExit("bench_jobboard needs the redis-server program")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.process = subprocess.Popen(
            [program, "--port", str(self.port), "--bind", "127.0.0.1", "--appendonly", "yes",
             "--dir", str(directory), "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("redis-server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def make_runner(state: Path, redis_port: int, timings: Timings) -> FlowRunner:
    conf = make_conf(
        config_files=[],
        overrides={
            "DEFAULT": {"state_path": str(state), "host": "bench"},
            "drivers": {"state_store": "noop", "flows": ["delete_amphora"]},
            "jobboard": {
                "enabled": True,
                "url": f"redis://127.0.0.1:{redis_port}/0",
                "name": f"bench-{uuid.uuid4().hex[:8]}",
                "conductor_threads": THREADS,
            },
        },
    )
    drivers = loader.load_drivers(conf)
    flows = loader.load_flows(conf, drivers, extra=[SixNoops])
    return FlowRunner(conf, drivers, flows, observers=[timings], backend=persistence_backend(conf))


def _take(runner: FlowRunner) -> tuple[str, Accepted, float]:
    request_id = f"req-{uuid.uuid4()}"
    cast_at = time.perf_counter()
    accepted = runner.take({"event": "six_noops", "request_id": request_id, "payload": {}})
    return request_id, accepted, cast_at


def _direct(runner: FlowRunner) -> Callable[[int, Timings], dict[str, float]]:
    def measure(count: int, timings: Timings) -> dict[str, float]:
        timings.expect(count)
        casts = {}
        with ThreadPoolExecutor(THREADS) as pool:
            start = time.perf_counter()
            for _ in range(count):
                request_id, accepted, cast_at = _take(runner)
                casts[request_id] = cast_at
                pool.submit(runner.run, accepted.job, accepted.book, accepted.flow_detail)
            timings.all_ended.wait(600)
        return _summary(start, casts, timings)

    return measure


def _jobboard(runner: FlowRunner) -> Callable[[int, Timings], dict[str, float]]:
    dispatcher = JobBoardDispatcher(runner.conf, runner)

    def measure(count: int, timings: Timings) -> dict[str, float]:
        timings.expect(count)
        casts = {}
        start = time.perf_counter()
        for _ in range(count):
            request_id, accepted, cast_at = _take(runner)
            casts[request_id] = cast_at
            dispatcher.post(accepted)
        timings.all_ended.wait(600)
        return _summary(start, casts, timings)

    return measure


def _summary(start: float, casts: dict[str, float], timings: Timings) -> dict[str, float]:
    end = max(timings.ended.values())
    latencies = sorted(timings.first_task[rid] - cast_at for rid, cast_at in casts.items())
    return {
        "rate": len(casts) / (end - start),
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


def rows(flows: int = 300, backlog: int = 1000) -> list[dict]:
    """Measure both modes in the same run; see the module docstring."""
    print(f"jobboard: six no-op tasks, {THREADS} threads, durable SQLite, private Redis",
          file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="keramos-bench-") as tmp:
        redis = RedisServer(Path(tmp))
        timings = Timings()
        runner = make_runner(Path(tmp) / "state", redis.port, timings)
        conductor = Conductor(runner.conf, runner).start()
        try:
            direct, board = _direct(runner), _jobboard(runner)
            direct(20, timings)
            board(20, timings)
            results = {}
            for label, measure in (("direct", direct), ("jobboard", board)):
                results[label] = measure(flows, timings)
                print(f"  {label}: {flows} flows, {results[label]['rate']:.1f}/s", file=sys.stderr)
            for label, measure in (("direct", direct), ("jobboard", board)):
                results[f"{label} backlog"] = measure(backlog, timings)
                print(f"  {label}, backlog of {backlog}: cast->first task p50 "
                      f"{results[f'{label} backlog']['p50']:.0f}ms p99 "
                      f"{results[f'{label} backlog']['p99']:.0f}ms", file=sys.stderr)
        finally:
            conductor.stop(30)
            runner.close()
            runner.drivers.close()
            redis.stop()
    jobboard, plain = results["jobboard"], results["direct"]
    jobboard_backlog, plain_backlog = results["jobboard backlog"], results["direct backlog"]
    return [
        row("jobboard vs direct runner, durable SQLite, 4 threads", jobboard["rate"],
            plain["rate"], "flows/s", ">= 0.8"),
        row(f"cast->first task p50, backlog {backlog} (jobboard vs direct)",
            jobboard_backlog["p50"], plain_backlog["p50"], "ms", "info"),
        row(f"cast->first task p99, backlog {backlog} (jobboard vs direct)",
            jobboard_backlog["p99"], plain_backlog["p99"], "ms", "info"),
    ]


if __name__ == "__main__":
    arguments = [int(value) for value in sys.argv[1:3]]
    print(format_table(rows(*arguments)))
