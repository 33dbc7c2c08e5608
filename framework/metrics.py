"""Prometheus metrics of runs: an observer that counts and times them, and the /metrics endpoint.

:class:`MetricsObserver` is a :class:`~keramos.framework.observers.RunObserver`: it sees every
run through the runner's hooks, and the flows never know it is there. ``[metrics] bind``
(``host:port``) turns it on in ``keramos-worker`` and ``keramos-health``.

A worker runs ``[worker] workers`` processes (cotyledon forks them). They share one endpoint
through prometheus_client's multiprocess mode: before forking, the parent makes a private
directory (:func:`prepare_multiprocess`), each worker process writes its values there, and one
more process the parent starts serves ``/metrics`` by adding up the files of all of them
(:func:`aggregating_registry`). One port, the sum over the processes, no scrape configuration
that knows how many processes run; a process that died stops counting in the ``in flight``
gauge at the next scrape.

``prometheus_client`` is imported inside the functions: multiprocess mode is chosen when it is
first imported, which must happen after :func:`prepare_multiprocess` in a worker.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from oslo_config import cfg
from oslo_log import log as logging
from taskflow import states

from keramos.framework.errors import ConfigError, InvalidEvent
from keramos.framework.observers import RunObserver

if TYPE_CHECKING:
    from keramos.framework.envelope import Job
    from keramos.framework.errors import FlowFailed

LOG = logging.getLogger(__name__)

#: Histogram buckets of flow and task durations, in seconds: flows last from milliseconds (noop
#: drivers) to minutes (an amphora booting).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

_TASK_ENDS = {states.SUCCESS: "success", states.FAILURE: "failure"}
_REVERT_ENDS = {states.REVERTED: "reverted", states.REVERT_FAILURE: "revert_failure"}
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w*_(\d+)\.db")


def parse_bind(text: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9464`` for IPv6) as a pair; :class:`ConfigError` when it is not."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"[metrics] bind must be host:port, not {text!r}")
    return host, int(port)


def listen(conf: cfg.ConfigOpts) -> socket.socket | None:
    """The listening socket of ``[metrics] bind``, or ``None`` when metrics are off.

    Bound by the caller before it starts anything, so that a port in use is one clear error.
    """
    if not conf.metrics.bind:
        return None
    host, port = parse_bind(conf.metrics.bind)
    try:
        return socket.create_server((host, port), family=socket.getaddrinfo(host, port)[0][0])
    except OSError as error:
        raise ConfigError(f"[metrics] bind: cannot listen on {conf.metrics.bind}: {error}") from None


class MetricsServer:
    """Serves ``registry`` at ``/metrics`` on an already bound socket, in a daemon thread."""

    def __init__(self, sock: socket.socket, registry: Any) -> None:
        from prometheus_client.exposition import MetricsHandler

        self._server = ThreadingHTTPServer(
            sock.getsockname()[:2], MetricsHandler.factory(registry), bind_and_activate=False
        )
        self._server.socket.close()
        self._server.socket = sock
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="keramos-metrics", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        """The host and port served."""
        return self._server.socket.getsockname()[:2]

    def start(self) -> MetricsServer:
        """Start answering scrapes."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering and close the socket."""
        self._server.shutdown()
        self._server.server_close()


def prepare_multiprocess(directory: str | None = None) -> str:
    """Make this process and the ones it forks write their metrics under one new directory.

    Call it before forking and before anything imports ``prometheus_client``'s metrics; returns
    the directory (the caller removes it with :func:`remove_multiprocess`).
    """
    path = directory or tempfile.mkdtemp(prefix="keramos-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    from prometheus_client import values

    # Chosen when prometheus_client was imported: choose again now that the directory is set.
    values.ValueClass = values.get_value_class()
    return path


def remove_multiprocess(directory: str) -> None:
    """Remove the directory of :func:`prepare_multiprocess` (the worker stops)."""
    shutil.rmtree(directory, ignore_errors=True)


class _DeadProcesses:
    """At each scrape, forget the live gauges (flows in flight) of worker processes that died."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Any]:
        from prometheus_client import multiprocess

        for name in os.listdir(self.directory):
            found = _LIVE_GAUGE_FILE.fullmatch(name)
            if found is None:
                continue
            pid = int(found.group(1))
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                multiprocess.mark_process_dead(pid, self.directory)
            except PermissionError:
                continue
        return iter(())


def aggregating_registry(directory: str) -> Any:
    """A registry adding up the metrics every process wrote under ``directory``."""
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    registry.register(_DeadProcesses(directory))
    multiprocess.MultiProcessCollector(registry, path=directory)
    return registry


class JobsWaiting:
    """A collector of ``keramos_jobboard_jobs_waiting``: the unclaimed jobs on the board, counted
    at each scrape with ``count`` (``None`` when the board did not answer: the metric is left
    out rather than reported as zero)."""

    def __init__(self, count: Callable[[], int | None]) -> None:
        self.count = count

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        waiting = self.count()
        if waiting is None:
            return
        family = GaugeMetricFamily(
            "keramos_jobboard_jobs_waiting", "Jobs posted on the jobboard that no conductor claimed."
        )
        family.add_metric([], waiting)
        yield family


class MetricsObserver(RunObserver):
    """Counts and times the runs it sees, in Prometheus metrics on ``registry``.

    ``registry`` defaults to prometheus_client's own (the one multiprocess mode writes to
    files); tests give a fresh ``CollectorRegistry``. ``clock`` is for tests. The metrics:

    - ``keramos_flows_started_total{flow}``, ``keramos_flows_succeeded_total{flow}``,
      ``keramos_flows_failed_total{flow}``; ``keramos_flows_reverted_total{flow}``: failed flows
      whose every revert succeeded, and ``keramos_task_revert_failures_total{flow,task}``;
    - ``keramos_flow_duration_seconds{flow,outcome}`` and
      ``keramos_task_duration_seconds{flow,task,outcome}`` histograms;
    - ``keramos_flows_in_flight{flow}``;
    - ``keramos_casts_rejected_total{reason}``: the refusal's error type (``PayloadError``,
      ``UnknownEvent``, ...) or ``not_recorded`` when the state store failed.
    """

    def __init__(self, registry: Any = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        registry = REGISTRY if registry is None else registry
        self.clock = clock

        def counter(name: str, documentation: str, *labels: str) -> Any:
            return Counter(name, documentation, labels, registry=registry)

        self.started_total = counter("keramos_flows_started", "Flows started or resumed.", "flow")
        self.succeeded_total = counter("keramos_flows_succeeded", "Flows that succeeded.", "flow")
        self.failed_total = counter("keramos_flows_failed", "Flows that failed.", "flow")
        self.reverted_total = counter(
            "keramos_flows_reverted", "Failed flows whose every task reverted cleanly.", "flow"
        )
        self.revert_failures_total = counter(
            "keramos_task_revert_failures",
            "Task reverts that failed (what they made may be left behind).",
            "flow",
            "task",
        )
        self.rejected_total = counter(
            "keramos_casts_rejected", "Casts refused before their flow ran.", "reason"
        )
        self.flow_seconds = Histogram(
            "keramos_flow_duration_seconds",
            "Seconds from a flow's start to its end (a failed one: to the end of its revert).",
            ("flow", "outcome"),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.task_seconds = Histogram(
            "keramos_task_duration_seconds",
            "Seconds a task ran (outcome success or failure) or reverted (reverted, "
            "revert_failure).",
            ("flow", "task", "outcome"),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "keramos_flows_in_flight",
            "Flows running now.",
            ("flow",),
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._lock = threading.Lock()
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._task_started: dict[tuple[str, str], float] = {}
        self._revert_failed: set[str] = set()

    def _of(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, kept: labelling validates its values on every call."""
        child = self._children.get((metric, values))
        if child is None:
            child = self._children[(metric, values)] = metric.labels(*values)
        return child

    def rejected(self, request_id: str | None, event: str | None, error: Exception) -> None:
        """Count the refusal by its reason."""
        reason = type(error).__name__ if isinstance(error, InvalidEvent) else "not_recorded"
        self._of(self.rejected_total, reason).inc()

    def started(self, job: Job) -> None:
        """Count the start; one more flow in flight."""
        self._of(self.started_total, job.event).inc()
        self._of(self.in_flight, job.event).inc()

    def task_state_changed(
        self, job: Job, task_name: str, state: str, details: Mapping[str, Any]
    ) -> None:
        """Time each task's run and revert; count the reverts that failed."""
        key = (job.request_id, task_name)
        if state in (states.RUNNING, states.REVERTING):
            with self._lock:
                self._task_started[key] = self.clock()
            return
        outcome = _TASK_ENDS.get(state) or _REVERT_ENDS.get(state)
        if outcome is None:
            return
        with self._lock:
            began = self._task_started.pop(key, None)
            if state == states.REVERT_FAILURE:
                self._revert_failed.add(job.request_id)
        if state == states.REVERT_FAILURE:
            self._of(self.revert_failures_total, job.event, task_name).inc()
        if began is not None:
            self._of(self.task_seconds, job.event, task_name, outcome).observe(self.clock() - began)

    def succeeded(self, job: Job, result: dict[str, Any], duration: float) -> None:
        """Count the success and its duration."""
        self._ended(job, "success", duration)
        self._of(self.succeeded_total, job.event).inc()

    def failed(self, job: Job, failure: FlowFailed, duration: float) -> None:
        """Count the failure, whether its revert was clean, and its duration."""
        with self._lock:
            revert_failed = job.request_id in self._revert_failed
            self._revert_failed.discard(job.request_id)
        self._ended(job, "failure", duration)
        self._of(self.failed_total, job.event).inc()
        if not revert_failed:
            self._of(self.reverted_total, job.event).inc()

    def _ended(self, job: Job, outcome: str, duration: float) -> None:
        self._of(self.in_flight, job.event).dec()
        self._of(self.flow_seconds, job.event, outcome).observe(duration)
        with self._lock:
            for key in [key for key in self._task_started if key[0] == job.request_id]:
                del self._task_started[key]


_process_observer: MetricsObserver | None = None
_process_observer_lock = threading.Lock()


def process_observer() -> MetricsObserver:
    """This process's one :class:`MetricsObserver` on prometheus_client's registry (a metric is
    registered once per process: every worker built in it shares the observer)."""
    global _process_observer
    with _process_observer_lock:
        if _process_observer is None:
            _process_observer = MetricsObserver()
        return _process_observer


@contextlib.contextmanager
def serving(sock: socket.socket | None, registry: Any) -> Iterator[MetricsServer | None]:
    """Serve ``registry`` on ``sock`` for the block (nothing when ``sock`` is ``None``)."""
    if sock is None:
        yield None
        return
    server = MetricsServer(sock, registry).start()
    LOG.info("serving Prometheus metrics on http://%s:%s/metrics", *server.address[:2])
    try:
        yield server
    finally:
        server.stop()
