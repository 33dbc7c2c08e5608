"""Jobboard mode (``[jobboard] enabled``): any worker finishes any flow.

An intake takes a cast as usual (:meth:`FlowRunner.take`: task record ``pending``, durable flow
detail), then posts it as a job on a shared taskflow jobboard (:class:`JobBoardDispatcher`)
before acknowledging it. A :class:`Conductor` in every worker process claims jobs and runs
them with :meth:`FlowRunner.run`; when a worker dies its claims expire and another worker
resumes its flows from their last completed task. A job whose claims keep ending without an
outcome is parked after ``[jobboard] max_attempts`` (:class:`JobParked`).

A worker process wires it with :func:`jobboard_mode`::

    mode = jobboard_mode(conf, runner)      # None unless [jobboard] enabled
    ...
    accepted = runner.take(envelope)
    if accepted is not None:
        if mode is not None:
            mode.post(accepted)             # then acknowledge the cast
        else:
            runner.run(accepted.job, accepted.book, accepted.flow_detail)
"""

from keramos.framework.jobboard.board import (
    JobBoardUnavailable,
    jobboard_from_conf,
    jobboard_health,
)
from keramos.framework.jobboard.conductor import Conductor, JobParked
from keramos.framework.jobboard.dispatcher import (
    JobBoardDispatcher,
    JobBoardMode,
    check_shared_storage,
    jobboard_mode,
)

__all__ = [
    "Conductor",
    "JobBoardDispatcher",
    "JobBoardMode",
    "JobBoardUnavailable",
    "JobParked",
    "check_shared_storage",
    "jobboard_from_conf",
    "jobboard_health",
    "jobboard_mode",
]
