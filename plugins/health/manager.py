"""The health manager: records amphora heartbeats, fails over the silent, re-pushes the lagging.

``keramos-health --config-file FILE`` listens for heartbeats on ``[health] bind_host:bind_port``
(UDP) and every ``check_interval`` seconds:

- casts ``failover_amphora`` for each READY amphora silent for ``heartbeat_timeout`` seconds,
  unless more of them are silent than ``failover_threshold`` allows: then it fails over none and
  logs an error, because that many at once is a network partition, not broken amphorae;
- casts ``push_config`` for each load balancer an amphora reports running an older version of
  than the one recorded (eventual convergence, as seed 004's nodes catch up with the
  coordinator).

Each cast is recorded as a pending task first, so that an amphora or a load balancer is never
cast for twice while its flow is queued or running. The decisions are plain classes taking a
clock (:mod:`.checks`); this module holds the options and the thin edge around them: the UDP
socket (:class:`HeartbeatListener`), the timer (:class:`HealthManager`) and :func:`main`.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from oslo_config import cfg
from oslo_log import log as logging

from keramos.framework import config, loader, metrics, tracing
from keramos.framework.agent_protocol.heartbeat import (
    Heartbeat,
    HeartbeatRejected,
    HeartbeatVerifier,
)
from keramos.framework.client import KeramosClient
from keramos.framework.config import make_conf
from keramos.framework.contracts import StateStore
from keramos.framework.contracts.flow import Cast
from keramos.framework.errors import ConfigError, KeramosError
from keramos.framework.warnings_filter import silence_dependency_warnings
from keramos.plugins.health.checks import FailoverThreshold, HealthChecker, HeartbeatRecorder
from keramos.plugins.health.metrics import HealthMetrics

LOG = logging.getLogger(__name__)

GROUP = "health"


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register the ``[health]`` options on ``conf`` (idempotent)."""
    conf.register_opts(config.health_opts, group=GROUP)


class HeartbeatListener:
    """The UDP edge: receives datagrams, verifies and records them, never lets an error out."""

    def __init__(
        self,
        sock: socket.socket,
        verifier: HeartbeatVerifier,
        recorder: HeartbeatRecorder,
    ) -> None:
        self.sock = sock
        self.verifier = verifier
        self.recorder = recorder
        self._stopping = threading.Event()

    @classmethod
    def bind(
        cls, host: str, port: int, verifier: HeartbeatVerifier, recorder: HeartbeatRecorder
    ) -> HeartbeatListener:
        """A listener on a new UDP socket bound to ``host:port`` (port 0: any free port)."""
        family = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        sock.settimeout(0.2)
        return cls(sock, verifier, recorder)

    @property
    def address(self) -> tuple[str, int]:
        """The host and port the socket is bound to."""
        return self.sock.getsockname()[:2]

    def handle(self, datagram: bytes, source: Any) -> Heartbeat | None:
        """Verify and record one datagram; a refusal is logged with its reason."""
        try:
            heartbeat = self.verifier.verify(datagram)
            self.recorder.record(heartbeat)
            return heartbeat
        except HeartbeatRejected as reason:
            LOG.warning("heartbeat from %s refused: %s", source, reason)
        except KeramosError as error:
            LOG.error("heartbeat from %s not recorded: %s", source, error)
        except Exception:
            LOG.exception("heartbeat from %s not recorded", source)
        return None

    def serve(self) -> None:
        """Receive until :meth:`stop`; one bad datagram or a failing store never ends the loop."""
        limit = self.verifier.max_bytes + 1
        while not self._stopping.is_set():
            try:
                datagram, source = self.sock.recvfrom(limit)
            except socket.timeout:
                continue
            except OSError as error:
                if self._stopping.is_set():
                    break
                LOG.error("heartbeat socket error: %s", error)
                continue
            self.handle(datagram, source)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._stopping.set()
        self.sock.close()


class HealthManager:
    """The service: a listener thread and a check thread around one checker.

    Built from a configuration with the ``[health]`` options; ConfigError when it cannot work.
    """

    def __init__(
        self,
        conf: cfg.ConfigOpts,
        state_store: StateStore,
        cast: Cast,
        *,
        clock: Callable[[], float] = time.time,
        metrics: HealthMetrics | None = None,
    ) -> None:
        register_opts(conf)
        self.metrics = metrics
        group = conf[GROUP]
        if not group.heartbeat_key:
            raise ConfigError(f"[{GROUP}] heartbeat_key must be set")
        self.interval = group.check_interval
        self.recorder = HeartbeatRecorder(state_store, clock)
        verifier = HeartbeatVerifier(
            group.heartbeat_key,
            replay_window=group.replay_window,
            max_bytes=group.max_heartbeat_bytes,
            clock=clock,
        )
        try:
            self.listener = HeartbeatListener.bind(
                group.bind_host, group.bind_port, verifier, self.recorder
            )
        except OSError as error:
            raise ConfigError(
                f"[{GROUP}] cannot listen on {group.bind_host}:{group.bind_port}: {error}"
            ) from error
        self.checker = HealthChecker(
            state_store,
            self.recorder,
            cast,
            heartbeat_timeout=group.heartbeat_timeout,
            threshold=FailoverThreshold.parse(group.failover_threshold),
            convergence_grace=group.convergence_grace,
            clock=clock,
        )
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def _check_forever(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                outcome = self.checker.check()
                if self.metrics is not None:
                    self.metrics.checked(outcome)
            except Exception:
                LOG.exception("health check failed; it runs again in %gs", self.interval)

    def start(self) -> HealthManager:
        """Start listening and checking."""
        for target, name in ((self.listener.serve, "listen"), (self._check_forever, "check")):
            thread = threading.Thread(target=target, name=f"keramos-health-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        LOG.info("health manager listening on %s:%s (UDP)", *self.listener.address)
        return self

    def stop(self) -> None:
        """Stop both threads."""
        self._stopping.set()
        self.listener.stop()
        for thread in self._threads:
            thread.join(5)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``keramos-health``."""
    silence_dependency_warnings()
    parser = argparse.ArgumentParser(
        prog="keramos-health",
        description="Record amphora heartbeats; fail over silent amphorae and re-push lagging "
        "load balancer configurations.",
    )
    parser.add_argument("--config-file", action="append", default=[], metavar="PATH")
    args = parser.parse_args(argv)
    cli_args = [item for path in args.config_file for item in ("--config-file", path)]
    try:
        conf = make_conf(cli_args, config_files=[] if cli_args else None)
    except cfg.Error as error:
        print(f"keramos-health: configuration error: {error}", file=sys.stderr)
        return 2
    logging.setup(conf, "keramos")
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    try:
        state_store = loader.load_state_store(conf)
    except KeramosError as error:
        print(f"keramos-health: cannot start: {error}", file=sys.stderr)
        return 2
    client = KeramosClient(conf)
    metrics_socket = registry = tracer_provider = None
    try:
        # The failover and push casts are traced: their flows' spans join the cast's trace.
        tracer_provider = tracing.setup(conf, "keramos-health")
        metrics_socket = metrics.listen(conf)
        if metrics_socket is not None:
            from prometheus_client import CollectorRegistry

            registry = CollectorRegistry()
        health_metrics = HealthMetrics(registry, state_store) if registry is not None else None
        manager = HealthManager(conf, state_store, client.cast, metrics=health_metrics).start()
    except KeramosError as error:
        print(f"keramos-health: cannot start: {error}", file=sys.stderr)
        if metrics_socket is not None:
            metrics_socket.close()
        client.close()
        state_store.close()
        return 2
    with metrics.serving(metrics_socket, registry):
        stopped.wait()
    manager.stop()
    tracing.flush(tracer_provider)
    client.close()
    state_store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
