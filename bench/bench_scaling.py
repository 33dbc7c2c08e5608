"""Benchmark: ``create_amphora`` flows/s with I/O-bound drivers on 1, 2 and 4 worker processes.

A real ``keramos-worker`` (``[worker] workers = N``, cotyledon) consumes from a fresh topic on the
real RabbitMQ; its drivers are the noop drivers with ``[noop_drivers] call_delay = 0.05``, so each
flow spends most of its time waiting (11 driver calls, 0.55 s; 0.7 s a flow alone) and only a
little on the CPU. The state store and flow persistence are one PostgreSQL database, created for
each run and dropped after: every process writes to it at once. (SQLite files shared by several
processes would serialise their writers on the file's lock, which is what this benchmark must not
measure.)
The noop drivers' ledger stays the default SQLite file under the shared ``state_path``: a short
``BEGIN IMMEDIATE`` per driver write, outside the 50 ms sleep.

Each run warms every process up (two flows per process), then casts ``creations`` flows from a
:class:`KeramosClient` and times them from the first cast to the last task record's
``updated_at`` (read from the database; the client never asks the workers, so polling adds no
work to them). The CPU time (user + system) of the worker's processes over the same window, per
flow, shows the ceiling of this 2-core machine: processes beyond the cores help only while flows
wait on I/O.

Concurrency, since ``[worker] executor_threads`` is per process:

* the goal rows keep the default 16 flow threads per process, as an operator who raises
  ``workers`` gets them: 16, 32 and 64 flows at once for 1, 2 and 4 processes;
* the equal-concurrency rows give 64 flow threads in all (1 x 64, 2 x 32 against 4 x 16): what
  processes give over threads in one process (the GIL) when concurrency is not the limit.

With ``profile`` one more run of a single process (1 x 64, loaded) is sampled by ``py-spy record
--gil --nonblocking`` (sampling only the thread holding the GIL, without pausing the process); a
summary of where its CPU goes is printed to stderr and the raw stacks kept in a file.

``python bench/bench_scaling.py [CREATIONS]`` (RabbitMQ on 127.0.0.1:5672 guest/guest, PostgreSQL
on 127.0.0.1:5432); progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import kombu
import psutil
import sqlalchemy as sa

from keramos.framework.client import KeramosClient
from keramos.framework.records import TaskRecord, TaskState, utcnow
from keramos.plugins.state_store.sqlalchemy import TABLES, SQLAlchemyStateStore, _as_utc

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

from bench_lifecycle import POSTGRES_URL, _postgres_database  # noqa: E402
from common import format_table, row  # noqa: E402

from tests.functional.conftest import WorkerProcess, delete_queues  # noqa: E402

RABBIT_URL = os.environ.get("KERAMOS_BENCH_RABBIT_URL", "rabbit://guest:guest@127.0.0.1:5672/")

#: Seconds every noop driver call sleeps: I/O-bound drivers.
CALL_DELAY = 0.05

#: Flow threads per process in the goal rows (the default ``[worker] executor_threads``).
THREADS_PER_PROCESS = 16

#: Flow threads in all in the equal-concurrency rows.
TOTAL_THREADS = 64

#: Samples per second of the profile.
PROFILE_RATE = 100


@dataclasses.dataclass(frozen=True)
class Run:
    """One measured run: ``flows`` created by ``processes`` x ``threads`` in ``seconds``.

    CPU seconds over the same window: ``cpu_seconds`` of the worker's processes, ``database`` of
    the PostgreSQL backends serving the run's database, ``broker`` of RabbitMQ (shared with
    anyone else using it), ``bench`` of this process (casts, polling), ``machine`` of every core
    (whoever used it); ``errors`` is the number of ERROR lines in the worker's log.
    """

    processes: int
    threads: int
    flows: int
    seconds: float
    cpu_seconds: float
    database: float
    broker: float
    bench: float
    machine: float
    load: tuple[float, float, float]
    errors: int

    @property
    def label(self) -> str:
        """``processes x threads``."""
        return f"{self.processes} x {self.threads}"

    @property
    def rate(self) -> float:
        """Flows per second."""
        return self.flows / self.seconds

    @property
    def cpu_ms_per_flow(self) -> float:
        """Milliseconds of the worker processes' CPU per flow."""
        return 1000 * self.cpu_seconds / self.flows

    @property
    def database_ms_per_flow(self) -> float:
        """Milliseconds of PostgreSQL's CPU per flow."""
        return 1000 * self.database / self.flows

    @property
    def machine_busy(self) -> float:
        """Share of all cores busy (anyone's work) during the run."""
        return self.machine / (self.seconds * (psutil.cpu_count() or 1))

    @property
    def others(self) -> float:
        """CPU seconds of the machine that neither this run's processes nor the broker used:
        other engineers' work on the shared machine."""
        return max(0.0, self.machine - self.cpu_seconds - self.database - self.broker - self.bench)


class _CpuWatch:
    """User + system CPU seconds that the processes matching ``wanted`` spend from :meth:`start`,
    sampled at each :meth:`sample` (a process that exits between samples loses what it spent
    since the last one)."""

    def __init__(self, wanted: Callable[[psutil.Process], bool]) -> None:
        self._wanted = wanted
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}

    def _read(self) -> dict[int, float]:
        seen = {}
        for process in psutil.process_iter():
            try:
                if self._wanted(process):
                    times = process.cpu_times()
                    seen[process.pid] = times.user + times.system
            except psutil.Error:
                continue
        return seen

    def start(self) -> None:
        """Take the baseline."""
        self._first = self._read()
        self._last = dict(self._first)

    def sample(self) -> None:
        """Note what every matching process has spent so far."""
        self._last.update(self._read())

    def seconds(self) -> float:
        """CPU seconds spent since :meth:`start`, as of the last sample."""
        return sum(spent - self._first.get(pid, 0.0) for pid, spent in self._last.items())


def _cmdline_has(process: psutil.Process, name: str, text: str) -> bool:
    return process.name() == name and any(text in part for part in process.cmdline())


def _flow_pids(pid: int) -> list[int]:
    """The worker processes that run flows: the children of the cotyledon master ``pid``."""
    return sorted(child.pid for child in psutil.Process(pid).children())


def _busy_seconds(before: Any, after: Any) -> float:
    """CPU seconds of the machine (all cores, everyone) not idle between two
    ``psutil.cpu_times()``."""
    spent = sum(after) - sum(before)
    idle = (after.idle + after.iowait) - (before.idle + before.iowait)
    return spent - idle


def _consumers(topic: str) -> int:
    """How many consumers RabbitMQ counts on the queue of ``topic``."""
    with kombu.Connection(RABBIT_URL.replace("rabbit://", "amqp://", 1)) as connection:
        return connection.channel().queue_declare(queue=topic, passive=True).consumer_count


def _wait_for_consumers(worker: WorkerProcess, processes: int, timeout: float = 120.0) -> None:
    """Wait until every process consumes from the topic, so that RabbitMQ deals the casts out to
    all of them (the first one up would otherwise take every cast already queued)."""
    deadline = time.monotonic() + timeout
    while _consumers(worker.topic) < processes:
        if time.monotonic() > deadline or worker.process.poll() is not None:
            raise RuntimeError(f"{processes} consumers not up on {worker.topic}:\n{worker.log()[-3000:]}")
        time.sleep(0.2)


def _create(
    client: KeramosClient,
    store: SQLAlchemyStateStore,
    prefix: str,
    count: int,
    watches: Sequence[_CpuWatch] = (),
) -> tuple[dt.datetime, dt.datetime]:
    """Cast ``count`` create_amphora at once; the time of the first cast and of the last end.

    The tasks table is polled with one aggregate query every 0.25 s (cheap: the bench shares the
    cores it measures); ``watches`` are sampled every second.
    """
    tasks = TABLES[TaskRecord]
    mine = tasks.c.resource_id.like(f"{prefix}-%")
    query = sa.select(
        sa.func.count().filter(tasks.c.state == TaskState.SUCCESS),
        sa.func.count().filter(tasks.c.state == TaskState.FAILURE),
        sa.func.max(tasks.c.updated_at),
    ).where(mine)
    started = utcnow()
    for i in range(count):
        client.create_amphora(f"{prefix}-{i}", "img")
    deadline = time.monotonic() + 600
    next_sample = time.monotonic()
    while True:
        with store.engine.connect() as connection:
            done, failed, last = connection.execute(query).one()
        if failed:
            with store.engine.connect() as connection:
                error = connection.execute(
                    sa.select(tasks.c.error_type, tasks.c.message).where(mine, tasks.c.state == TaskState.FAILURE)
                ).first()
            raise RuntimeError(f"{failed} flows failed, first: {error}")
        if time.monotonic() >= next_sample or done == count:
            for watch in watches:
                watch.sample()
            next_sample += 1.0
        if done == count:
            return started, _as_utc(last)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count - done} of {count} flows still running after 600s")
        time.sleep(0.25)


def _profiler(pid: int, output: Path) -> subprocess.Popen:
    """``py-spy record`` of process ``pid``: GIL holder only, without pausing it, raw stacks to
    ``output`` (its own messages beside it, ``.log``)."""
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        raise RuntimeError("py-spy is not installed: pip install py-spy")
    command = [py_spy, "record", "--pid", str(pid), "--gil", "--nonblocking", "--rate", str(PROFILE_RATE)]
    command += ["--format", "raw", "--output", str(output)]
    with open(output.with_suffix(".log"), "wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def _measure(processes: int, threads: int, creations: int, postgres_url: str, profile_to: Path | None = None) -> Run:
    """One run of ``processes`` x ``threads`` on a fresh database and topic."""
    with _postgres_database(postgres_url) as url, tempfile.TemporaryDirectory(prefix="keramos-bench-scaling-") as tmp:
        if url is None:
            raise RuntimeError(f"PostgreSQL at {postgres_url} is needed")
        settings: dict[str, dict[str, object]] = {
            "worker": {"workers": processes, "executor_threads": threads},
            "noop_drivers": {"call_delay": CALL_DELAY},
            "state_store": {"connection": url},
            "persistence": {"connection": url},
        }
        worker = WorkerProcess(Path(tmp), RABBIT_URL, settings)
        store = SQLAlchemyStateStore(worker.conf(), url=url)
        database = url.rpartition("/")[2]
        try:
            worker.start()
            worker.wait_ready(timeout=120)
            _wait_for_consumers(worker, processes)
            with worker.client() as client:
                prefix = uuid.uuid4().hex[:6]
                _create(client, store, f"warm-{prefix}", 2 * processes)
                master = worker.process.pid
                profiler = _profiler(_flow_pids(master)[0], profile_to) if profile_to else None
                watches = {
                    "worker": _CpuWatch(lambda p: p.pid == master or p.ppid() == master),
                    "database": _CpuWatch(lambda p: _cmdline_has(p, "postgres", f" {database} ")),
                    "broker": _CpuWatch(lambda p: p.name() == "beam.smp"),
                    "bench": _CpuWatch(lambda p: p.pid == os.getpid()),
                }
                for watch in watches.values():
                    watch.start()
                machine_before, load = psutil.cpu_times(), os.getloadavg()
                started, ended = _create(client, store, f"b-{prefix}", creations, list(watches.values()))
                machine_after = psutil.cpu_times()
                if profiler is not None:
                    profiler.send_signal(signal.SIGINT)
                    profiler.wait(60)
        finally:
            store.close()
            worker.stop()
            delete_queues(RABBIT_URL, worker.queues())
        error_lines = [line for line in worker.log().splitlines() if " ERROR " in line]
        errors = len(error_lines)
        if error_lines:
            print(f"  first ERROR line of the worker's log: {error_lines[0][:400]}", file=sys.stderr)
    run = Run(
        processes,
        threads,
        creations,
        (ended - started).total_seconds(),
        watches["worker"].seconds(),
        watches["database"].seconds(),
        watches["broker"].seconds(),
        watches["bench"].seconds(),
        _busy_seconds(machine_before, machine_after),
        load,
        errors,
    )
    print(
        f"  {run.label} flow threads: {creations} in {run.seconds:.1f}s, {run.rate:.1f}/s; CPU per flow: "
        f"worker {run.cpu_ms_per_flow:.1f} ms, PostgreSQL {run.database_ms_per_flow:.1f} ms, "
        f"RabbitMQ {1000 * run.broker / creations:.1f} ms, bench {1000 * run.bench / creations:.1f} ms; "
        f"machine busy {100 * run.machine_busy:.0f}% of {psutil.cpu_count()} cores, of which others "
        f"{run.others / run.seconds:.2f} cores; load before {load[0]:.2f}; {errors} ERROR lines",
        file=sys.stderr,
    )
    return run


def _frame_package(frame: str) -> str:
    """The package of a py-spy frame ``function (path:line)``: keramos module, library, stdlib."""
    path = frame.rpartition("(")[2].rstrip(")").rpartition(":")[0]
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    for marker in ("/keramos/", "/wt/scaling/", "/work/main/"):
        if marker in path:
            return "keramos." + path.split(marker, 1)[1].removesuffix(".py").replace("/", ".")
    if "/lib/python" in path:
        return "stdlib." + path.split("/lib/python", 1)[1].split("/", 1)[1].removesuffix(".py")
    return path or frame


#: Inclusive shares worth naming: label -> substring of a frame.
_STAGES = {
    "taskflow engine (scheduling, storage, notifications)": "taskflow/",
    "flow persistence (keramos.framework.persistence)": "framework/persistence.py",
    "state store (plugins/state_store/sqlalchemy.py)": "state_store/sqlalchemy.py",
    "noop drivers' ledger (SQLite)": "noop_ledger.py",
    "SQLAlchemy": "sqlalchemy/",
    "psycopg2": "psycopg2/",
    "oslo.messaging / kombu / amqp (casts in, notifications out)": "oslo_messaging/",
    "logging": "logging/",
}


def _function(frame: str) -> str:
    """``function (path)`` of a py-spy frame ``function (path:line)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rpartition(':')[0] or where.rstrip(')')})"


def _summarise_profile(output: Path, seconds: float, top: int = 12, functions: int = 25) -> None:
    """Print where the sampled process's CPU went: GIL-held samples by the package of their
    innermost frame (self), the inclusive share of a few stages, and the functions with the
    largest inclusive share below the threads' own entry points (75%)."""
    leaf: collections.Counter[str] = collections.Counter()
    stages: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in output.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")[1:]
        total += count
        leaf[_frame_package(frames[-1]) if frames else "?"] += count
        for label, marker in _STAGES.items():
            if any(marker in frame for frame in frames):
                stages[label] += count
        for name in {_function(frame) for frame in frames}:
            inclusive[name] += count
    if not total:
        print(f"  profile: no samples in {output}", file=sys.stderr)
        return
    held = 100 * total / (seconds * PROFILE_RATE)
    print(
        f"  profile of one process (1 x {TOTAL_THREADS}): {total} samples with the GIL held in "
        f"{seconds:.1f}s at {PROFILE_RATE}/s (GIL held {held:.0f}% of the time); raw stacks in {output}",
        file=sys.stderr,
    )
    print("  self time by package of the innermost frame:", file=sys.stderr)
    for package, count in leaf.most_common(top):
        print(f"    {100 * count / total:5.1f}%  {package}", file=sys.stderr)
    print("  inclusive time in:", file=sys.stderr)
    for label, count in stages.most_common():
        print(f"    {100 * count / total:5.1f}%  {label}", file=sys.stderr)
    print("  functions by inclusive time:", file=sys.stderr)
    below = [(name, count) for name, count in inclusive.most_common() if count < 0.75 * total]
    for name, count in below[:functions]:
        print(f"    {100 * count / total:5.1f}%  {name}", file=sys.stderr)


def _best(runs: list[Run]) -> Run:
    return max(runs, key=lambda run: run.rate)


def rows(
    creations: int = 300, postgres_url: str = POSTGRES_URL, rounds: int = 2, profile: bool = True
) -> list[dict[str, Any]]:
    """Flows/s on 1, 2 and 4 processes (16 flow threads each, then 64 in all; the best of
    ``rounds`` rounds run in turn), CPU per flow, and (``profile``) a py-spy profile of one loaded
    process."""
    print(
        f"  scaling: {creations} create_amphora per run, noop drivers sleeping {CALL_DELAY * 1000:.0f} ms "
        f"per call, {psutil.cpu_count()} cores, load {os.getloadavg()[0]:.2f}",
        file=sys.stderr,
    )
    shapes = [(n, THREADS_PER_PROCESS) for n in (1, 2, 4)] + [(n, TOTAL_THREADS // n) for n in (1, 2)]
    measured: dict[tuple[int, int], list[Run]] = {shape: [] for shape in shapes}
    for _round in range(rounds):
        for processes, threads in shapes:
            measured[(processes, threads)].append(_measure(processes, threads, creations, postgres_url))
    best = {shape: _best(runs) for shape, runs in measured.items()}
    one = best[(1, THREADS_PER_PROCESS)]
    equal_one = best[(1, TOTAL_THREADS)]
    title = f"create_amphora/s, {CALL_DELAY * 1000:.0f} ms driver calls, PostgreSQL"
    table = [
        row(
            f"{title}, {best[(n, THREADS_PER_PROCESS)].label} flow threads (raw: {one.label})",
            best[(n, THREADS_PER_PROCESS)].rate,
            one.rate,
            "flows/s",
            goal,
        )
        for n, goal in ((2, ">= 1.8x"), (4, ">= 3x"))
    ]
    table += [
        row(
            f"{title}, {best[shape].label} flow threads (raw: {equal_one.label}, {TOTAL_THREADS} in all)",
            best[shape].rate,
            equal_one.rate,
            "flows/s",
            "info: processes over threads",
        )
        for shape in ((2, TOTAL_THREADS // 2), (4, THREADS_PER_PROCESS))
    ]
    table += [
        row(
            f"worker CPU per flow, {run.label} (raw: {one.label}); PostgreSQL {run.database_ms_per_flow:.0f} ms, "
            f"machine busy {100 * run.machine_busy:.0f}%, others {run.others / run.seconds:.1f} cores",
            run.cpu_ms_per_flow,
            one.cpu_ms_per_flow,
            "ms",
            "info",
        )
        for run in best.values()
    ]
    cores = psutil.cpu_count() or 1
    top = _best(list(best.values()))
    table.append(
        row(
            f"{cores}-core ceiling: {cores} CPU-s/s over worker + PostgreSQL CPU per flow at {top.label} "
            f"(raw: best rate measured, {top.label})",
            cores * top.flows / (top.cpu_seconds + top.database),
            top.rate,
            "flows/s",
            "info",
        )
    )
    if profile:
        output = Path(tempfile.gettempdir()) / f"keramos-bench-scaling-{uuid.uuid4().hex[:6]}.pyspy.txt"
        run = _measure(1, TOTAL_THREADS, creations, postgres_url, profile_to=output)
        _summarise_profile(output, run.seconds)
    return table


if __name__ == "__main__":
    print(format_table(rows(int(sys.argv[1]) if len(sys.argv) > 1 else 300)))
