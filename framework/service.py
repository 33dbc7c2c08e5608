"""The Keramos worker: consumes casts over oslo.messaging and runs their flows.

``keramos-worker --config-file /etc/keramos/keramos.conf`` checks every driver and flow once,
then starts ``[worker] workers`` processes (cotyledon), each taking casts from ``[worker] topic``
with its intake (:mod:`keramos.framework.intake`) and serving calls on the control topic.
SIGTERM stops consuming, lets running flows finish for ``[worker] graceful_shutdown_timeout``
seconds, and leaves any still running in the persistence backend, resumed by the next start.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import cotyledon
import oslo_messaging
from oslo_config import cfg
from oslo_log import log as logging
from taskflow import exceptions as tf_exceptions

from keramos.framework import __version__, intake, loader, messaging, metrics, rpc, tracing
from keramos.framework.client import KeramosClient
from keramos.framework.config import check_overrides_claimed, check_values, make_conf
from keramos.framework.contracts import Driver, FlowFactory, PeriodicTask
from keramos.framework.errors import KeramosError
from keramos.framework.health_check import check_health
from keramos.framework.jobboard import jobboard_mode
from keramos.framework.jobboard.board import count_waiting
from keramos.framework.observers import RunObserver
from keramos.framework.runner import FlowRunner
from keramos.framework.warnings_filter import silence_dependency_warnings

LOG = logging.getLogger(__name__)


def persistence_backend(conf: cfg.ConfigOpts) -> Any:
    """The taskflow persistence backend of ``[persistence]``, or ``None`` when disabled."""
    if not conf.persistence.enabled:
        return None
    from keramos.framework.persistence import get_backend

    return get_backend(conf.persistence.connection, conf.persistence.synchronous)


class Worker:
    """One worker process's parts: drivers, flows, runner, intake and control RPC server.

    Built whole or not at all: if any driver or flow fails to load, what was built is closed
    and the :class:`~keramos.framework.errors.PluginLoadError` propagates.

    ``observers`` watch every run (see :mod:`keramos.framework.observers`); ``None`` means one
    :class:`~keramos.framework.rpc.NotificationObserver` on the notification transport, which
    the worker closes when it stops, plus the metrics observer when ``[metrics] bind`` is set
    and the tracing observer when ``[tracing] enabled``. Observers given here are the caller's
    to close.
    """

    def __init__(
        self,
        conf: cfg.ConfigOpts,
        *,
        transport: oslo_messaging.Transport | None = None,
        drivers: dict[str, Driver] | None = None,
        extra_flows: Iterable[type[FlowFactory]] = (),
        observers: Sequence[RunObserver] | None = None,
    ) -> None:
        self.conf = conf
        self.drivers = loader.load_drivers(conf, **(drivers or {}))
        try:
            flows = loader.load_flows(conf, self.drivers, extra=extra_flows)
            check_overrides_claimed(conf)
            self._own_transport = transport is None
            self.transport = transport or messaging.rpc_transport(conf)
            self._notifier = (
                None
                if observers is not None
                else rpc.NotificationObserver(conf, messaging.notification_transport(conf))
            )
            self._tracer_provider = None
            if observers is None:
                observers = [self._notifier, *self._observability()]
            self.runner = FlowRunner(
                conf, self.drivers, flows, observers=observers, backend=persistence_backend(conf)
            )
            #: ``[jobboard] enabled``: accepted casts become jobs, and a conductor runs jobs.
            self.jobboard = jobboard_mode(conf, self.runner)
        except Exception:
            self.drivers.close()
            raise
        self.endpoint = rpc.WorkerEndpoint(self.runner, jobboard=self.jobboard)
        #: Takes casts off the queue; ``intake.connected`` is ``False`` while the broker is away.
        self.intake: intake.Intake = intake.build(conf, self.transport, self.endpoint)
        self.control = rpc.control_server(conf, self.transport, self.endpoint)
        self._resumer: threading.Thread | None = None
        self._stopping = threading.Event()
        self._periodic: list[threading.Thread] = []

    def _observability(self) -> list[RunObserver]:
        """The metrics and tracing observers the configuration asks for (this process's)."""
        observers: list[RunObserver] = []
        if self.conf.metrics.bind:
            observers.append(metrics.process_observer())
        self._tracer_provider = tracing.setup(self.conf)
        if self._tracer_provider is not None:
            observers.append(tracing.TracingObserver(self._tracer_provider))
        return observers

    def start_periodic_tasks(self) -> None:
        """Run the flows' periodic tasks in threads; they cast through this worker's transport."""
        client = KeramosClient(self.conf, transport=self.transport)
        for factory in self.runner.flows.values():
            for periodic in factory.periodic_tasks():
                thread = threading.Thread(
                    target=self._every,
                    args=(periodic, client.cast),
                    name=f"keramos-periodic-{periodic.name}",
                    daemon=True,
                )
                thread.start()
                self._periodic.append(thread)

    def _every(self, periodic: PeriodicTask, cast: Callable[..., str]) -> None:
        while not self._stopping.wait(periodic.interval):
            try:
                periodic.run(cast)
            except Exception:
                LOG.exception("periodic task %s failed; it runs again in %ss", periodic.name,
                              periodic.interval)

    def start(self, *, resume: bool | None = None) -> None:
        """Start consuming; resume this host's unfinished flows in the background first."""
        resume = self.conf.worker.resume_on_start if resume is None else resume
        if self.jobboard is not None:
            # Any worker's conductor resumes any unfinished flow: none is resumed by owner here,
            # or a flow another conductor holds could run twice.
            self.jobboard.start()
        elif resume:
            self._resumer = threading.Thread(
                target=self.runner.resume_unfinished,
                args=(self.conf.host,),
                name="keramos-resume",
                daemon=True,
            )
            self._resumer.start()
        self.control.start()
        self.intake.start()
        LOG.info(
            "worker %s consuming topic %s with the %s intake",
            self.conf.host,
            self.conf.worker.topic,
            type(self.intake).__name__,
        )
        LOG.info("worker %s serves events: %s", self.conf.host, ", ".join(sorted(self.runner.flows)))

    def stop(self, timeout: float | None = None) -> bool:
        """Stop consuming and wait up to ``timeout`` seconds for accepted flows.

        Returns ``True`` if every flow ended; flows that did not are left to be resumed by the
        next start of this host.
        """
        timeout = self.conf.worker.graceful_shutdown_timeout if timeout is None else timeout
        self._stopping.set()
        self.intake.stop()
        self.control.stop()
        self.control.wait()
        drained = self.endpoint.drain(timeout)
        if self.jobboard is not None:
            drained = self.jobboard.stop(timeout) and drained
        if drained:
            self.runner.close()
            self.drivers.close()
        else:
            LOG.warning(
                "%d flow(s) still running or queued after %ss: leaving them to be resumed",
                self.endpoint.active,
                timeout,
            )
        if self._notifier is not None:
            self._notifier.close()
        tracing.flush(self._tracer_provider)
        if self._own_transport:
            self.transport.cleanup()
        return drained


class WorkerService(cotyledon.Service):
    """One worker process under cotyledon."""

    name = "keramos-worker"

    def __init__(self, worker_id: int, conf: cfg.ConfigOpts) -> None:
        super().__init__(worker_id)
        self.conf = conf
        self.worker: Worker | None = None
        self._stopped = threading.Event()

    def run(self) -> None:
        self.worker = Worker(self.conf)
        first = self.worker_id == 0
        self.worker.start(resume=self.conf.worker.resume_on_start and first)
        if first:
            self.worker.start_periodic_tasks()
        self._stopped.wait()

    def terminate(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        self._stopped.set()


class MetricsService(cotyledon.Service):
    """The process serving ``/metrics`` for all the worker processes: it adds up the values
    they write under the multiprocess directory (:mod:`keramos.framework.metrics`), plus the
    jobs waiting on the board in jobboard mode. Serves on the socket the parent bound."""

    name = "keramos-metrics"

    def __init__(self, worker_id: int, conf: cfg.ConfigOpts, sock: Any, directory: str) -> None:
        super().__init__(worker_id)
        self.conf = conf
        self.sock = sock
        self.directory = directory
        self._stopped = threading.Event()

    def run(self) -> None:
        registry = metrics.aggregating_registry(self.directory)
        if self.conf.jobboard.enabled:
            registry.register(metrics.JobsWaiting(lambda: count_waiting(self.conf)))
        with metrics.serving(self.sock, registry):
            self._stopped.wait()

    def terminate(self) -> None:
        self._stopped.set()


def check_plugins(conf: cfg.ConfigOpts) -> None:
    """Load every configured driver and flow once and close them, and create the persistence
    tables: fail before forking, and leave no table for the worker processes to race on."""
    drivers = loader.load_drivers(conf)
    try:
        loader.load_flows(conf, drivers)
    finally:
        drivers.close()
    backend = persistence_backend(conf)
    if backend is not None:
        backend.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``keramos-worker``."""
    silence_dependency_warnings()
    parser = argparse.ArgumentParser(
        prog="keramos-worker",
        description="Consume Keramos casts from the message queue and run their flows.",
    )
    parser.add_argument("--config-file", action="append", default=[], metavar="PATH")
    parser.add_argument("--config-dir", action="append", default=[], metavar="DIR")
    parser.add_argument("--version", action="version", version=f"keramos {__version__}")
    parser.add_argument(
        "--check-health",
        action="store_true",
        help="check the broker, the jobboard, the persistence backend and the state store this "
        "configuration names, one line each, and exit: 0 when every one answers, 1 otherwise",
    )
    args = parser.parse_args(argv)
    cli_args: list[str] = []
    for path in args.config_file:
        cli_args += ["--config-file", path]
    for path in args.config_dir:
        cli_args += ["--config-dir", path]
    try:
        conf = make_conf(cli_args, config_files=[] if cli_args else None)
    except cfg.Error as error:
        print(f"keramos-worker: configuration error: {error}", file=sys.stderr)
        return 2
    logging.setup(conf, "keramos")
    if args.check_health:
        checks = check_health(conf)
        for check in checks:
            print(check.line())
        return 0 if all(check.ok for check in checks) else 1
    try:
        tracing.check(conf)
        check_plugins(conf)
        check_values(conf)
        metrics_socket = metrics.listen(conf)
    except (KeramosError, tf_exceptions.StorageFailure, ValueError) as error:
        LOG.error("cannot start: %s", error)
        print(f"keramos-worker: cannot start: {error}", file=sys.stderr)
        return 2
    manager = cotyledon.ServiceManager(
        graceful_shutdown_timeout=conf.worker.graceful_shutdown_timeout + 5
    )
    directory = None
    if metrics_socket is not None:
        directory = metrics.prepare_multiprocess()
        LOG.info("worker processes write their metrics under %s", directory)
        manager.add(MetricsService, workers=1, args=(conf, metrics_socket, directory))
    manager.add(WorkerService, workers=conf.worker.workers, args=(conf,))
    try:
        manager.run()
    finally:
        if directory is not None:
            metrics.remove_multiprocess(directory)
    return 0
