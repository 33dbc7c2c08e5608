"""The health manager's Prometheus metrics: how long ago each amphora was heard, and failovers.

Served at ``[metrics] bind`` by ``keramos-health`` (one process: a plain registry).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from oslo_log import log as logging

from keramos.framework.contracts import StateStore
from keramos.framework.records import AmphoraRecord, AmphoraStatus
from keramos.plugins.health.checks import CheckOutcome

LOG = logging.getLogger(__name__)


class HeartbeatAges:
    """A collector of ``keramos_amphora_heartbeat_age_seconds{amphora_id}``, read from the state
    store at each scrape: the seconds since each READY amphora's last heartbeat (since it became
    READY when none came yet). A store that does not answer leaves the metric out."""

    def __init__(self, state_store: StateStore, clock: Callable[[], float] = time.time) -> None:
        self.state_store = state_store
        self.clock = clock

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            ready = self.state_store.find(AmphoraRecord, status=AmphoraStatus.READY)
        except Exception as error:
            LOG.warning("cannot read the amphorae for their heartbeat ages: %s", error)
            return
        family = GaugeMetricFamily(
            "keramos_amphora_heartbeat_age_seconds",
            "Seconds since the last heartbeat of each READY amphora.",
            labels=["amphora_id"],
        )
        now = self.clock()
        for record in ready:
            heard = record.last_heartbeat_at or record.updated_at
            family.add_metric([record.amphora_id], max(0.0, now - heard.timestamp()))
        yield family


class HealthMetrics:
    """The health manager's metrics on ``registry``: heartbeat ages (at each scrape) and the
    counters of what its checks decided (:meth:`checked`)."""

    def __init__(
        self, registry: Any, state_store: StateStore, clock: Callable[[], float] = time.time
    ) -> None:
        from prometheus_client import Counter

        self.registry = registry
        registry.register(HeartbeatAges(state_store, clock))
        self.failovers_total = Counter(
            "keramos_failovers", "failover_amphora casts for silent amphorae.", registry=registry
        )
        self.failovers_blocked_total = Counter(
            "keramos_failovers_blocked",
            "Checks that found more amphorae silent than [health] failover_threshold allows, and "
            "failed none over (a network partition?).",
            registry=registry,
        )

    def checked(self, outcome: CheckOutcome) -> None:
        """Count the failovers one check cast, or that it held back."""
        self.failovers_total.inc(len(outcome.failed_over))
        if outcome.blocked:
            self.failovers_blocked_total.inc()
