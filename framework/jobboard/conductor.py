"""The conductor of a worker process: claims jobs off the board and runs them with the runner.

taskflow's non-blocking conductor does the claiming, the thread pool and the consume / abandon /
trash of each job; :class:`Conductor` gives it the Keramos part of a dispatch: count the
attempt durably, park a job that has had its ``[jobboard] max_attempts``, and otherwise hand
the job's flow detail to :meth:`FlowRunner.run`, which resumes it from its last completed task
and reports it to the runner's observers like any run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from typing import Any

from oslo_config import cfg
from oslo_log import log as logging
from taskflow import exceptions as tf_exceptions
from taskflow.conductors.backends import impl_nonblocking
from taskflow.persistence import models

from keramos.framework.envelope import Job
from keramos.framework.errors import ConfigError, FlowFailed, InvalidEvent, KeramosError, describe
from keramos.framework.jobboard.board import (
    BOARD_ERRORS,
    EXPIRING_BACKENDS,
    GuardedBoard,
    Health,
    Slots,
    connect,
    location,
    make_board,
)
from keramos.framework.observers import notify
from keramos.framework.records import TaskRecord, TaskState, utcnow
from keramos.framework.runner import FlowRunner

LOG = logging.getLogger(__name__)

#: Key of the jobboard's bookkeeping in a flow detail's ``meta``.
META_KEY = "jobboard"


class JobParked(KeramosError):
    """A job was taken off the board without running to its end; the message says why."""


class _Park(Exception):
    """Raised by a dispatch to have taskflow's conductor trash the job (after recording why)."""


class _Isolation:
    """Runs suspect jobs alone: a writer-preferring readers-writer lock.

    A job whose earlier attempt did not end may be what killed its worker, and took the jobs
    beside it down too; run alone, a poison job only kills itself, and the jobs it took down
    the first time do not use up their attempts.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def hold(self, alone: bool):
        """Hold the lock, alone (a suspect) or shared (any other job), until the block ends."""
        with self._condition:
            if alone:
                self._writers_waiting += 1
                while self._writing or self._readers:
                    self._condition.wait()
                self._writers_waiting -= 1
                self._writing = True
            else:
                while self._writing or self._writers_waiting:
                    self._condition.wait()
                self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                if alone:
                    self._writing = False
                else:
                    self._readers -= 1
                self._condition.notify_all()


class _RunnerConductor(impl_nonblocking.NonBlockingConductor):
    """taskflow's non-blocking conductor with Keramos's dispatch instead of its own engine."""

    def __init__(self, dispatch: Any, done: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._keramos_dispatch = dispatch
        self._keramos_done = done

    def _dispatch_job(self, job: Any) -> bool:
        return self._keramos_dispatch(job)

    def _on_job_done(self, job: Any, fut: Any) -> None:
        try:
            super()._on_job_done(job, fut)
        finally:
            self._keramos_done()


def job_from_meta(
    runner: FlowRunner, meta: dict[str, Any], details: dict[str, Any] | None = None
) -> Job:
    """The runner's :class:`Job` for a flow detail's meta (validated again: a worker may differ),
    with the caster's trace context the job's ``details`` (or else the meta) carried.

    :raises InvalidEvent: this worker cannot run it.
    """
    trace_context = (details or {}).get("trace_context") or meta.get("trace_context") or {}
    job = runner.validate(
        {
            "event": meta.get("event"),
            "request_id": meta.get("request_id"),
            "payload": meta.get("payload"),
            "version": meta.get("version"),
        }
    )
    return dataclasses.replace(job, trace_context=trace_context) if trace_context else job


class Conductor:
    """Claims jobs off the board in a thread and runs them with ``runner`` until stopped.

    Build one per worker process, with the process's runner (its observers see every job run,
    exactly like a direct run). The claim owner is ``<host>.<pid>``. While a job runs its
    claim is renewed every third of ``[jobboard] claim_timeout``; if the process dies, the claim
    expires and another conductor claims the job and resumes its flow from the last completed
    task. Every claim counts as an attempt in the flow detail's meta; a job claimed again after
    ``[jobboard] max_attempts`` attempts that did not end (the worker died, or the job could not
    be loaded) is parked: its task record fails with :class:`JobParked` naming the attempts, the
    observers are told, and the job leaves the board.

    The board may go away: the conductor keeps running its flows, retries with a backoff
    bounded by ``[jobboard] max_backoff`` and reports itself degraded in :meth:`health`.
    """

    def __init__(self, conf: cfg.ConfigOpts, runner: FlowRunner) -> None:
        if not runner.durable:
            raise ConfigError("jobboard mode needs [persistence] enabled: a job names a flow detail")
        self.conf = conf
        self.runner = runner
        self.owner = f"{conf.host}.{os.getpid()}"
        self.health_state = Health(f"conductor {self.owner}: {location(conf)}")
        self._stopping = threading.Event()
        self._slots = Slots(conf.jobboard.conductor_threads)
        self._board = GuardedBoard(
            make_board(conf, runner.backend), conf, self.health_state, self._stopping, self._slots
        )
        self._conductor = _RunnerConductor(
            self._dispatch,
            self._slots.release,
            self.owner,
            self._board,
            persistence=runner.backend,
            wait_timeout=conf.jobboard.poll_interval,
            max_simultaneous_jobs=conf.jobboard.conductor_threads,
        )
        self._running: dict[str, Any] = {}
        self._isolation = _Isolation()
        self._running_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._renewer: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Conductor:
        """Start claiming and running jobs in background threads; returns ``self``."""
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._supervise, name=f"keramos-conductor-{self.owner}", daemon=True
        )
        self._thread.start()
        if self.conf.jobboard.backend in EXPIRING_BACKENDS:
            self._renewer = threading.Thread(
                target=self._renew_claims, name="keramos-conductor-renew", daemon=True
            )
            self._renewer.start()
        LOG.info("conductor %s claiming jobs on the %s", self.owner, location(self.conf))
        return self

    def stop(self, timeout: float | None = None) -> bool:
        """Stop claiming, wait up to ``timeout`` seconds for running jobs; ``True`` if they ended.

        Jobs still running keep their claims renewed while this process lives; when it exits
        they expire and another conductor resumes the flows.
        """
        self._conductor.stop()
        self._stopping.set()
        ended = True
        if self._thread is not None:
            self._thread.join(timeout)
            ended = not self._thread.is_alive()
        if ended:
            with contextlib.suppress(*BOARD_ERRORS):
                self._board.close()
        else:
            LOG.warning(
                "conductor %s: %d job(s) still running after %ss: their flows resume elsewhere "
                "once this process exits",
                self.owner,
                len(self._running),
                timeout,
            )
        return ended

    def health(self) -> tuple[bool, str]:
        """``(ok, detail)``: ``ok`` is false while the board is unreachable (degraded)."""
        return self.health_state.status()

    @property
    def degraded(self) -> bool:
        """``True`` while the board is unreachable; running flows go on meanwhile."""
        return self.health_state.degraded

    @property
    def running(self) -> int:
        """How many jobs this conductor is running."""
        return len(self._running)

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            try:
                if not self._board.connected:
                    connect(self._board.board, self.conf)
                self.health_state.good(location(self.conf))
                self._conductor.run()
            except Exception as error:
                self._board.failed(error)
            else:
                return

    def _renew_claims(self) -> None:
        """Renew the claims of running jobs every third of the timeout, while any run.

        Goes on after :meth:`stop` for jobs still running, until they end or the process exits.
        """
        expiry = self.conf.jobboard.claim_timeout
        while not (self._stopping.is_set() and not self._running):
            time.sleep(expiry / 3)
            with self._running_lock:
                jobs = list(self._running.values())
            for job in jobs:
                try:
                    self._renew(job, expiry)
                except Exception:
                    LOG.exception("conductor %s: could not renew the claim of job %s",
                                  self.owner, job.uuid)

    def _renew(self, job: Any, expiry: float) -> None:
        try:
            owner = self._board.owner_of(job)
            renewed = owner == self.owner and job.extend_expiry(expiry)
        except BOARD_ERRORS as error:
            self.health_state.bad(f"renewing claims: {error}")
            return
        if not renewed and job.uuid in self._running:
            self._reclaim(job, owner)

    def _reclaim(self, job: Any, owner: str | None) -> None:
        """The claim of a running job expired (the board was away longer than the timeout)."""
        if owner is None:
            try:
                self._board.claim(job, self.owner)
                LOG.warning("conductor %s: the claim of job %s had expired; claimed it again",
                            self.owner, job.uuid)
                return
            except tf_exceptions.NotFound:
                return
            except (tf_exceptions.UnclaimableJob, *BOARD_ERRORS) as error:
                owner = str(error)
        LOG.error(
            "conductor %s: lost the claim of job %s (%s) while running it (now: %s); another "
            "conductor may run its flow too",
            self.owner,
            job.uuid,
            job.details.get("request_id"),
            owner,
        )

    # -- one job ---------------------------------------------------------------------------

    def _dispatch(self, job: Any) -> bool:
        """Run one claimed job; ``True`` consumes it, ``False`` abandons it, :class:`_Park` trashes it."""
        with self._running_lock:
            self._running[job.uuid] = job
        try:
            return self._dispatch_claimed(job)
        finally:
            with self._running_lock:
                self._running.pop(job.uuid, None)

    def _dispatch_claimed(self, job: Any) -> bool:
        details = job.details or {}
        request_id = details.get("request_id", "?")
        store = self.runner.drivers.state_store
        try:
            record = store.get(TaskRecord, request_id)
        except Exception as error:
            return self._give_back(job, f"state store: {describe(error)['message']}")
        if record is not None and record.state in TaskState.TERMINAL:
            LOG.info("job %s (%s) already ended %s: taking it off the board",
                     job.uuid, request_id, record.state)
            return True
        try:
            book = job.book
            flow_detail = book.find(details.get("flow_uuid")) if book is not None else None
        except tf_exceptions.NotFound:
            flow_detail = None
        except Exception as error:
            return self._give_back(job, f"persistence: {describe(error)['message']}")
        if flow_detail is None:
            self._park(job, None, request_id, "its flow detail is missing from the persistence")
        meta = flow_detail.meta if flow_detail.meta is not None else {}
        board_meta = meta.setdefault(META_KEY, {})
        attempts = board_meta.setdefault("attempts", [])
        if len(attempts) >= self.conf.jobboard.max_attempts:
            self._park(job, flow_detail, request_id, self._exhausted(attempts))
        try:
            run_job = job_from_meta(self.runner, meta, details)
        except InvalidEvent as error:
            self._park(job, flow_detail, request_id, f"this worker cannot run it: {error}")
        with self._isolation.hold(alone=bool(attempts)):
            return self._attempt(job, record, book, flow_detail, run_job)

    def _attempt(
        self,
        job: Any,
        record: TaskRecord | None,
        book: models.LogBook,
        flow_detail: models.FlowDetail,
        run_job: Job,
    ) -> bool:
        """Count the attempt durably, then run the flow on from where it stopped."""
        request_id = run_job.request_id
        store = self.runner.drivers.state_store
        meta = flow_detail.meta
        board_meta = meta[META_KEY]
        attempts = board_meta["attempts"]
        attempts.append({"owner": self.owner, "claimed_at": utcnow().isoformat()})
        meta["owner"] = self.conf.host
        try:
            board_meta.setdefault("tasks", self.runner.task_order(run_job.event))
            flow_detail.meta = meta
            with contextlib.closing(self.runner.backend.get_connection()) as connection:
                connection.update_flow_details(flow_detail)
            if record is None:
                store.save(TaskRecord(request_id=request_id, event=run_job.event,
                                      resource_id=run_job.resource_id))
        except Exception as error:
            attempts.pop()
            return self._give_back(job, describe(error)["message"])
        LOG.info("conductor %s runs job %s (%s %s), attempt %d",
                 self.owner, job.uuid, run_job.event, request_id, len(attempts))
        with contextlib.suppress(FlowFailed):
            self.runner.run(run_job, book, flow_detail)
        return True

    def _give_back(self, job: Any, reason: str) -> bool:
        """Abandon a job that could not be started for a reason that may pass, after a pause."""
        LOG.warning("conductor %s gives job %s back to the board: %s", self.owner, job.uuid, reason)
        self._stopping.wait(min(self.conf.jobboard.claim_timeout / 3, 5.0))
        return False

    def _exhausted(self, attempts: list[dict[str, Any]]) -> str:
        owners = ", ".join(attempt.get("owner", "?") for attempt in attempts)
        return (
            f"parked after {len(attempts)} attempt(s) (max_attempts "
            f"{self.conf.jobboard.max_attempts}), none of which ended: the worker running it died "
            f"or lost its claim each time (claimed by {owners})"
        )

    def _park(
        self,
        job: Any,
        flow_detail: models.FlowDetail | None,
        request_id: str,
        reason: str,
    ) -> None:
        """Record a job as failed with ``reason``, tell the observers, and have it trashed."""
        details = job.details or {}
        event = details.get("event", "")
        LOG.error("job %s (%s %s) parked: %s", job.uuid, event, request_id, reason)
        if flow_detail is not None:
            meta = flow_detail.meta if flow_detail.meta is not None else {}
            meta.setdefault(META_KEY, {})["parked"] = {
                "reason": reason, "at": utcnow().isoformat(), "by": self.owner,
            }
            flow_detail.meta = meta
            with contextlib.suppress(Exception), contextlib.closing(
                self.runner.backend.get_connection()
            ) as connection:
                connection.update_flow_details(flow_detail)
        store = self.runner.drivers.state_store
        error = JobParked(reason)
        if store.get(TaskRecord, request_id) is None:
            store.save(TaskRecord(request_id=request_id, event=event))
        store.update(
            TaskRecord,
            request_id,
            state=TaskState.FAILURE,
            message=reason,
            error_type=type(error).__name__,
        )
        meta = (flow_detail.meta or {}) if flow_detail is not None else {}
        parked = Job(
            event=event,
            request_id=request_id,
            payload=meta.get("payload") or {},
            version=meta.get("version") or "",
        )
        failure = FlowFailed(event, request_id, type(error).__name__, reason, cause=error)
        notify(self.runner.observers, "failed", parked, failure, 0.0, request_id=request_id)
        raise _Park(reason)
