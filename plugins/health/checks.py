"""The health manager's decisions, free of sockets and timers (the core of :mod:`.manager`).

:class:`HeartbeatRecorder` keeps what the heartbeats say; :class:`HealthChecker` decides, on the
clock it is given, which READY amphorae are silent, whether so many are silent that failing them
over would be wrong (a network partition), and which load balancers an amphora runs an older
configuration of; it casts ``failover_amphora`` and ``push_config`` through the ``cast`` it is
given, recording each cast as a pending task first so that it is never cast twice while queued.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from oslo_log import log as logging

from keramos.framework.agent_protocol.heartbeat import Heartbeat
from keramos.framework.contracts import StateStore
from keramos.framework.contracts.flow import Cast
from keramos.framework.envelope import new_request_id
from keramos.framework.errors import ConfigError, NotFound
from keramos.framework.records import (
    AmphoraRecord,
    AmphoraStatus,
    LoadBalancerRecord,
    TaskRecord,
    TaskState,
)

LOG = logging.getLogger(__name__)

FAILOVER_EVENT = "failover_amphora"
PUSH_CONFIG_EVENT = "push_config"


def _as_datetime(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc)


@dataclasses.dataclass(frozen=True)
class FailoverThreshold:
    """How many silent amphorae may be failed over at once: a count, or a fraction of READY ones."""

    count: int | None = None
    fraction: float | None = None

    @classmethod
    def parse(cls, text: str) -> FailoverThreshold:
        """``"3"`` (count), ``"0.5"`` or ``"50%"`` (fraction); ConfigError otherwise."""
        value = text.strip()
        try:
            if value.endswith("%"):
                fraction = float(value[:-1]) / 100
            elif value.isdigit():
                count = int(value)
                if count < 1:
                    raise ValueError("a count must be at least 1")
                return cls(count=count)
            else:
                fraction = float(value)
            if not 0 < fraction <= 1 or not math.isfinite(fraction):
                raise ValueError("a fraction must be above 0 and at most 1 (100%)")
        except ValueError as error:
            raise ConfigError(
                f"[health] failover_threshold {text!r}: expected a count (3) or a fraction "
                f"(0.5 or 50%): {error}"
            ) from None
        return cls(fraction=fraction)

    def limit(self, ready: int) -> int:
        """The most amphorae that may be failed over at once among ``ready`` READY ones."""
        if self.count is not None:
            return self.count
        assert self.fraction is not None
        return max(1, math.floor(self.fraction * ready))


@dataclasses.dataclass(frozen=True)
class Report:
    """The last heartbeat accepted from one amphora, and when it arrived."""

    heartbeat: Heartbeat
    received_at: float


class HeartbeatRecorder:
    """Records accepted heartbeats: ``last_heartbeat_at`` in the state store, versions in memory."""

    def __init__(self, state_store: StateStore, clock: Callable[[], float] = time.time) -> None:
        self.state_store = state_store
        self.clock = clock
        self._lock = threading.Lock()
        self._reports: dict[str, Report] = {}

    def record(self, heartbeat: Heartbeat) -> bool:
        """Record ``heartbeat``; False (logged) when no such amphora is known."""
        now = self.clock()
        try:
            self.state_store.update(
                AmphoraRecord, heartbeat.amphora_id, last_heartbeat_at=_as_datetime(now)
            )
        except NotFound:
            LOG.warning("heartbeat from unknown amphora %s ignored", heartbeat.amphora_id)
            return False
        with self._lock:
            self._reports[heartbeat.amphora_id] = Report(heartbeat, now)
        return True

    def reports(self, newer_than: float) -> list[Report]:
        """The last report of each amphora received after ``newer_than``; older ones forgotten."""
        with self._lock:
            for amphora_id in [a for a, r in self._reports.items() if r.received_at <= newer_than]:
                del self._reports[amphora_id]
            return list(self._reports.values())


@dataclasses.dataclass
class CheckOutcome:
    """What one check decided: the amphorae silent, those failed over, the pushes cast."""

    silent: list[str] = dataclasses.field(default_factory=list)
    failed_over: list[str] = dataclasses.field(default_factory=list)
    blocked: bool = False
    pushed: list[str] = dataclasses.field(default_factory=list)


class HealthChecker:
    """Decides and casts failovers and configuration pushes; knows nothing of sockets.

    ``started_at`` is when listening began: an amphora is judged silent only for time this
    manager was listening, so a manager that was down does not fail over every amphora.
    """

    def __init__(
        self,
        state_store: StateStore,
        recorder: HeartbeatRecorder,
        cast: Cast,
        *,
        heartbeat_timeout: float,
        threshold: FailoverThreshold,
        convergence_grace: float = 5.0,
        clock: Callable[[], float] = time.time,
        started_at: float | None = None,
    ) -> None:
        self.state_store = state_store
        self.recorder = recorder
        self.cast = cast
        self.heartbeat_timeout = heartbeat_timeout
        self.threshold = threshold
        self.convergence_grace = convergence_grace
        self.clock = clock
        self.started_at = clock() if started_at is None else started_at

    def _busy(self, event: str) -> set[str | None]:
        return {
            record.resource_id
            for state in (TaskState.PENDING, TaskState.PROCESSING)
            for record in self.state_store.find(TaskRecord, event=event, state=state)
        }

    def _cast_recorded(self, event: str, resource_id: str, payload: dict[str, Any]) -> bool:
        # Recorded before the cast, so the next check skips it even while it is still queued.
        request_id = new_request_id()
        self.state_store.save(TaskRecord(request_id, event, resource_id=resource_id))
        try:
            self.cast(event, payload, request_id=request_id)
        except Exception as error:
            LOG.error("cannot cast %s for %s: %s", event, resource_id, error)
            self.state_store.update(
                TaskRecord,
                request_id,
                state=TaskState.FAILURE,
                error_type=type(error).__name__,
                message=f"health manager could not cast: {error}",
            )
            return False
        return True

    def silent_amphorae(self, ready: Iterable[AmphoraRecord], now: float) -> list[str]:
        """The ids of the READY amphorae heard from last more than ``heartbeat_timeout`` ago."""
        silent = []
        for record in ready:
            heard = record.last_heartbeat_at or record.updated_at
            last = max(heard.timestamp(), self.started_at)
            if now - last > self.heartbeat_timeout:
                silent.append(record.amphora_id)
        return silent

    def check_failovers(self, outcome: CheckOutcome, now: float) -> None:
        """Cast ``failover_amphora`` for silent READY amphorae, unless too many are silent."""
        ready = self.state_store.find(AmphoraRecord, status=AmphoraStatus.READY)
        outcome.silent = self.silent_amphorae(ready, now)
        if not outcome.silent:
            return
        limit = self.threshold.limit(len(ready))
        if len(outcome.silent) > limit:
            outcome.blocked = True
            LOG.error(
                "%d of %d READY amphorae silent for over %gs (at most %d failed over at once): "
                "this looks like a network partition, not amphora failure; no failover cast "
                "(silent: %s)",
                len(outcome.silent), len(ready), self.heartbeat_timeout, limit,
                ", ".join(sorted(outcome.silent)),
            )
            return
        busy = self._busy(FAILOVER_EVENT)
        for amphora_id in outcome.silent:
            if amphora_id in busy:
                continue
            LOG.warning("amphora %s silent for over %gs: failing it over", amphora_id,
                        self.heartbeat_timeout)
            if self._cast_recorded(FAILOVER_EVENT, amphora_id, {"amphora_id": amphora_id}):
                outcome.failed_over.append(amphora_id)

    def lagging_loadbalancers(
        self, reports: Sequence[Report]
    ) -> dict[str, tuple[LoadBalancerRecord, list[str]]]:
        """The load balancers some amphora runs an older version of than recorded, each with its
        record and its amphorae (those reporting it). Reports received within the grace after
        the record changed do not count: they may have left before the push landed."""
        members: dict[str, set[str]] = {}
        lagging: dict[str, LoadBalancerRecord] = {}
        records: dict[str, LoadBalancerRecord | None] = {}
        for report in reports:
            for lb_id, version in report.heartbeat.config_versions.items():
                members.setdefault(lb_id, set()).add(report.heartbeat.amphora_id)
                if lb_id not in records:
                    records[lb_id] = self.state_store.get(LoadBalancerRecord, lb_id)
                record = records[lb_id]
                if record is None or not record.running_version or not record.description:
                    continue
                settled = record.updated_at.timestamp() + self.convergence_grace
                if version < record.running_version and report.received_at > settled:
                    lagging[lb_id] = record
        return {lb_id: (lagging[lb_id], sorted(members[lb_id])) for lb_id in sorted(lagging)}

    def check_convergence(self, outcome: CheckOutcome, now: float) -> None:
        """Cast ``push_config`` again for each load balancer an amphora runs an old version of."""
        reports = self.recorder.reports(now - self.heartbeat_timeout)
        lagging = self.lagging_loadbalancers(reports)
        if not lagging:
            return
        busy = self._busy(PUSH_CONFIG_EVENT)
        failing_over = self._busy(FAILOVER_EVENT)
        for lb_id, (record, amphora_ids) in lagging.items():
            if lb_id in busy or failing_over.intersection(amphora_ids):
                continue
            assert record.description is not None
            payload = {
                "lb_id": lb_id,
                "amphora_ids": amphora_ids,
                "listeners": record.description.get("listeners", []),
                "pools": record.description.get("pools", []),
            }
            LOG.warning(
                "load balancer %s: an amphora runs a version older than %d; pushing it again to %s",
                lb_id, record.running_version, ", ".join(amphora_ids),
            )
            if self._cast_recorded(PUSH_CONFIG_EVENT, lb_id, payload):
                outcome.pushed.append(lb_id)

    def check(self) -> CheckOutcome:
        """One check: failovers, then convergence."""
        now = self.clock()
        outcome = CheckOutcome()
        self.check_failovers(outcome, now)
        self.check_convergence(outcome, now)
        return outcome
