"""Posting accepted casts as jobs, and what a worker process runs in jobboard mode."""

from __future__ import annotations

import threading
import time

from oslo_config import cfg
from oslo_log import log as logging
from sqlalchemy.engine import make_url
from taskflow.jobs import base as jobs_base

from keramos.framework.errors import ConfigError
from keramos.framework.jobboard.board import (
    BOARD_ERRORS,
    JobBoardUnavailable,
    connect,
    location,
    make_board,
)
from keramos.framework.jobboard.conductor import Conductor
from keramos.framework.records import TaskRecord, TaskState
from keramos.framework.runner import Accepted, FlowRunner

LOG = logging.getLogger(__name__)


def check_shared_storage(conf: cfg.ConfigOpts) -> list[str]:
    """Why this configuration cannot run jobboard mode across hosts (warnings), or ``[]``.

    :raises ConfigError: ``[persistence] enabled`` is false: a job names a durable flow detail.
    """
    if not conf.persistence.enabled:
        raise ConfigError(
            "[jobboard] enabled needs [persistence] enabled: a job names the durable flow "
            "detail that any worker resumes"
        )
    warnings = []
    for group in ("persistence", "state_store"):
        url = make_url(conf[group].connection)
        if url.get_backend_name() == "sqlite":
            warnings.append(
                f"[{group}] connection is SQLite ({url.database}): jobboard mode then works "
                f"for workers on this host only; workers on several hosts need PostgreSQL or "
                f"MySQL shared by all"
            )
    return warnings


class JobBoardDispatcher:
    """Posts accepted casts to the jobboard, for any worker's conductor to run.

    ``post`` is called after :meth:`FlowRunner.take` made the task record and the flow detail
    durable; the caller acknowledges the broker message once ``post`` returns. Thread-safe.
    """

    def __init__(self, conf: cfg.ConfigOpts, runner: FlowRunner) -> None:
        if not runner.durable:
            raise ConfigError("jobboard mode needs [persistence] enabled: a job names a flow detail")
        self.conf = conf
        self.runner = runner
        self._board: jobs_base.JobBoard = make_board(conf, runner.backend)
        self._lock = threading.Lock()

    def _connected(self) -> jobs_base.JobBoard:
        with self._lock:
            if not self._board.connected:
                connect(self._board, self.conf)
            return self._board

    def post_missing(self, request_id: str) -> str | None:
        """Post the job of a cast taken earlier whose job never reached the board; its uuid, or
        ``None`` when there is nothing to post.

        A cast is acknowledged only once its job is posted, so when :meth:`post` failed (or the
        worker died between taking the cast and posting it) the cast is delivered again, and
        :meth:`FlowRunner.take` drops it as known. This finds its task record still ``pending``
        with no job naming its flow detail, and posts one. Called on redeliveries only: it
        lists the board.

        :raises JobBoardUnavailable: as :meth:`post`.
        """
        record = self.runner.drivers.state_store.get(TaskRecord, request_id)
        if record is None or record.state != TaskState.PENDING or not record.flow_uuid:
            return None
        try:
            on_board = {
                (job.details or {}).get("flow_uuid")
                for job in self._connected().iterjobs(only_unclaimed=False, ensure_fresh=True)
            }
        except BOARD_ERRORS as error:
            raise JobBoardUnavailable(f"cannot list the {location(self.conf)}: {error}") from error
        if record.flow_uuid in on_board:
            return None
        found = self.runner.accepted_flow(record)
        if found is None:
            return None
        LOG.warning(
            "cast %s was taken but its job never reached the board: posting it now",
            request_id,
        )
        return self.post(found)

    def post(self, accepted: Accepted) -> str:
        """Post ``accepted`` as a job; return the job's uuid.

        Tries again for ``[jobboard] connect_timeout`` seconds while the board is unreachable.

        :raises JobBoardUnavailable: the job could not be posted; do not acknowledge the cast,
            so that it is delivered again.
        """
        job = accepted.job
        details = {
            "request_id": job.request_id,
            "event": job.event,
            "flow_uuid": accepted.flow_detail.uuid,
            "trace_context": dict(job.trace_context),
        }
        deadline = time.monotonic() + self.conf.jobboard.connect_timeout
        delay = 0.05
        while True:
            try:
                posted = self._connected().post(
                    f"{job.event}:{job.request_id}", book=accepted.book, details=details
                )
                return posted.uuid
            except BOARD_ERRORS as error:
                if time.monotonic() + delay > deadline:
                    raise JobBoardUnavailable(
                        f"cannot post {job.event} ({job.request_id}) to the {location(self.conf)}: "
                        f"{str(error).splitlines()[0]}"
                    ) from error
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def close(self) -> None:
        """Close the connection to the board."""
        with self._lock:
            if self._board.connected:
                self._board.close()


class JobBoardMode:
    """What a worker process runs in jobboard mode: the dispatcher its intake posts to, and a
    conductor running jobs with the same runner (hence the same observers and records).

    In jobboard mode a worker must not resume unfinished flows by owner
    (:meth:`FlowRunner.resume_unfinished`): the conductors resume them, whichever host died.
    """

    def __init__(self, conf: cfg.ConfigOpts, runner: FlowRunner) -> None:
        for warning in check_shared_storage(conf):
            LOG.warning("%s", warning)
        self.dispatcher = JobBoardDispatcher(conf, runner)
        self.conductor = Conductor(conf, runner)

    def post(self, accepted: Accepted) -> str:
        """Post an accepted cast as a job (see :meth:`JobBoardDispatcher.post`)."""
        return self.dispatcher.post(accepted)

    def post_missing(self, request_id: str) -> str | None:
        """Post the job of a cast taken earlier and never posted (see
        :meth:`JobBoardDispatcher.post_missing`)."""
        return self.dispatcher.post_missing(request_id)

    def start(self) -> None:
        """Start this process's conductor."""
        self.conductor.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the conductor (waiting ``timeout`` seconds for its jobs) and close the board."""
        ended = self.conductor.stop(timeout)
        self.dispatcher.close()
        return ended

    def health(self) -> tuple[bool, str]:
        """The conductor's ``(ok, detail)``: not ok while the board is unreachable."""
        return self.conductor.health()


def jobboard_mode(conf: cfg.ConfigOpts, runner: FlowRunner) -> JobBoardMode | None:
    """The jobboard parts of a worker process, or ``None`` when ``[jobboard] enabled`` is false.

    :raises ConfigError: jobboard mode cannot work with this configuration.
    """
    if not conf.jobboard.enabled:
        return None
    return JobBoardMode(conf, runner)


__all__ = [
    "JobBoardDispatcher", "JobBoardMode", "JobBoardUnavailable", "check_shared_storage",
    "jobboard_mode",
]
