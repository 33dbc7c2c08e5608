"""The agent's heartbeat sender: every interval, one signed UDP datagram to each controller.

The datagram (:mod:`keramos.framework.agent_protocol.heartbeat`) carries the amphora's id, a counter, the
time, and the configuration version each load balancer runs, so that the health manager can
tell a silent amphora from a live one and a lagging configuration from a current one.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from keramos.framework.agent_protocol.heartbeat import Heartbeat, encode, first_sequence, parse_endpoint
from keramos.plugins.agent.haproxy import HaproxyManager

LOG = logging.getLogger(__name__)


def running_versions(manager: HaproxyManager) -> dict[str, int]:
    """The configuration version each load balancer runs (0 when its HAProxy is not running)."""
    return {state.lb_id: state.running_version or 0 for state in manager.loadbalancers()}


class HeartbeatSender:
    """A daemon thread sending heartbeats to every endpoint every ``interval`` seconds.

    A failure to read the versions or to send to one endpoint is logged and the next beat
    happens as usual: the sender never stops on an error.
    """

    def __init__(
        self,
        amphora_id: str,
        endpoints: Sequence[str],
        key: str,
        interval: float,
        versions: Callable[[], Mapping[str, int]],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.amphora_id = amphora_id
        self.addresses = [parse_endpoint(endpoint) for endpoint in endpoints]
        self.key = key
        self.interval = interval
        self.versions = versions
        self.clock = clock
        self.sequence = first_sequence(clock)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def send_once(self) -> int:
        """Send one heartbeat to every endpoint; return how many endpoints it reached."""
        try:
            versions = dict(self.versions())
        except Exception:
            LOG.exception("heartbeat: cannot read the running configuration versions")
            versions = {}
        self.sequence += 1
        heartbeat = Heartbeat(self.amphora_id, self.sequence, self.clock(), versions)
        try:
            datagram = encode(heartbeat, self.key)
        except ValueError as error:
            LOG.error("heartbeat not sent: %s", error)
            return 0
        sent = 0
        for host, port in self.addresses:
            try:
                family = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][0]
                with socket.socket(family, socket.SOCK_DGRAM) as sock:
                    sock.sendto(datagram, (host, port))
                sent += 1
            except OSError as error:
                LOG.warning("heartbeat to %s:%s failed: %s", host, port, error)
        return sent

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.send_once()
            self._stopping.wait(self.interval)

    def start(self) -> HeartbeatSender:
        """Start sending (first heartbeat at once)."""
        self._thread = threading.Thread(target=self._run, name="keramos-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sending and wait for the thread."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)


def sender_from_settings(
    amphora_id: str | None,
    endpoints: Sequence[str],
    key: str | None,
    interval: float,
    state_dir: str,
    haproxy_binary: str = "haproxy",
) -> HeartbeatSender | None:
    """The agent's sender, or ``None`` when heartbeats are not configured.

    Without endpoints or a key there is no sender; without an amphora id neither (a heartbeat
    must say whose it is). ValueError for an endpoint that is not ``host:port``.
    """
    if not endpoints or not key:
        return None
    if not amphora_id:
        raise ValueError("heartbeats need [amphora_agent] amphora_id")
    manager = HaproxyManager(state_dir, haproxy_binary)
    return HeartbeatSender(amphora_id, endpoints, key, interval, lambda: running_versions(manager))


def run_sender_process(*settings: Any) -> None:
    """Body of the agent's heartbeat process: send until the process is terminated.

    ``settings`` are :func:`sender_from_settings`'s arguments. The agent runs this in a process
    of its own, started with the ``spawn`` method: gunicorn forks its workers from the arbiter,
    and a thread running in the arbiter at fork time can leave a lock held in the child
    (logging's, for one) that hangs the worker's first request.
    """
    sender = sender_from_settings(*settings)
    if sender is None:
        return
    sender.start()
    threading.Event().wait()
