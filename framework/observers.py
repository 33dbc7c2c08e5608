"""What watches a run: one observer base class with no-op hooks, and the one place they are called.

Everything that watches flows (notifications, the log, the CLI's progress lines, the testing
kit's recording, and later metrics and traces) is a :class:`RunObserver` subclass overriding the
hooks it cares about. Observers are registered on the runner
(``FlowRunner(..., observers=[...])``, :meth:`FlowRunner.add_observer
<keramos.framework.runner.FlowRunner.add_observer>`); a single run may add its own
(``runner.submit(envelope, observers=[...])``), which see that run only.

The hooks of one run are called in this order::

    rejected                          a cast refused before anything ran (and nothing else)
    accepted -> started -> task_state_changed* -> succeeded | failed

A flow resumed after a restart of its worker starts at ``started`` (it was accepted by the
previous process). Hooks run in the thread that runs the flow, and runs of one worker run at
once: an observer that keeps state guards it with a lock. An observer that raises is logged and
skipped: it stops neither the flow nor the other observers (:func:`notify`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from oslo_log import log as logging

from keramos.framework.errors import describe

if TYPE_CHECKING:
    from keramos.framework.envelope import Job
    from keramos.framework.errors import FlowFailed

LOG = logging.getLogger(__name__)

#: The name of a :class:`RunObserver` hook.
Hook = Literal["rejected", "accepted", "started", "task_state_changed", "succeeded", "failed"]

#: ``callback(task_name, state, details)``: what :class:`ProgressObserver` calls on each change.
ProgressCallback = Callable[[str, str, Mapping[str, Any]], None]

_EVENT_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


class RunObserver:
    """Base class of everything that watches runs; every hook does nothing until overridden.

    A plugin author subclasses it and overrides only the hooks it needs. Hooks return nothing and
    should be quick: they run in the flow's thread, between its steps. An exception a hook raises
    is logged with the hook's name and the run's request id, and otherwise ignored.
    """

    def rejected(self, request_id: str | None, event: str | None, error: Exception) -> None:
        """A cast was refused before anything ran.

        ``error`` is an :class:`~keramos.framework.errors.InvalidEvent` (unknown event, version
        not served, bad payload; ``request_id`` and ``event`` are then what the cast named, or
        ``None``), or the error that kept a valid cast from being recorded (a state store down).
        """

    def accepted(self, job: Job) -> None:
        """A valid cast was recorded ``pending`` and its flow will run."""

    def started(self, job: Job) -> None:
        """The job's flow starts (or resumes, after a restart of its worker)."""

    def task_state_changed(
        self, job: Job, task_name: str, state: str, details: Mapping[str, Any]
    ) -> None:
        """A task (atom) of the job's flow changed state.

        ``state`` is a taskflow state (``RUNNING``, ``SUCCESS``, ``FAILURE``, ``REVERTING``,
        ``REVERTED``, ``REVERT_FAILURE``, ...); ``details`` is what taskflow's atom notifier
        gives, e.g. ``result`` (a taskflow ``Failure`` on ``FAILURE``).
        """

    def succeeded(self, job: Job, result: dict[str, Any], duration: float) -> None:
        """The job's flow succeeded with ``result`` (JSON-compatible) after ``duration`` seconds."""

    def failed(self, job: Job, failure: FlowFailed, duration: float) -> None:
        """The job's flow failed and its revert has ended, ``duration`` seconds after it started.

        ``failure.cause`` is the original exception (``None`` only when it crossed a process).
        Each task's revert reached :meth:`task_state_changed` before (``REVERTED``, or
        ``REVERT_FAILURE`` for a revert that itself failed).
        """


def overrides(observer: RunObserver, hook: Hook) -> bool:
    """Whether ``observer`` does something on ``hook`` (overrides :class:`RunObserver`'s no-op)."""
    return getattr(type(observer), hook, None) is not getattr(RunObserver, hook)


def notify(observers: Iterable[RunObserver], hook: Hook, *args: Any, request_id: str | None) -> None:
    """Call ``hook(*args)`` on every observer, in order; one that raises is logged and skipped."""
    for observer in observers:
        try:
            getattr(observer, hook)(*args)
        except Exception:
            LOG.exception(
                "observer %s raised in %s (request %s); the flow and the other observers go on",
                type(observer).__qualname__,
                hook,
                request_id or "(none)",
            )


class EventObserver(RunObserver):
    """Reports runs as the events ``keramos.<flow>.start|end|error``; subclasses say where.

    The payloads, as notifications carry them:

    - ``start``: ``request_id``, ``resource_id``, ``version``;
    - ``end``: ``request_id``, ``resource_id``, ``duration``, ``result``;
    - ``error`` of a failed flow: ``request_id``, ``resource_id``, ``duration``, ``error``;
    - ``error`` of a refused cast: ``request_id``, ``error`` (``keramos.invalid.error`` when the
      cast named no usable event).

    ``error`` is ``{"type", "message"}``.
    """

    def emit(self, event_type: str, payload: dict[str, Any], *, error: bool = False) -> None:
        """Report one event (``error`` for ``.error`` events); the base class drops it."""

    def rejected(self, request_id: str | None, event: str | None, error: Exception) -> None:
        """Emit ``keramos.<event>.error`` for the refused cast."""
        name = event if event and _EVENT_NAME.fullmatch(event) else "invalid"
        self.emit(
            f"keramos.{name}.error", {"request_id": request_id, "error": describe(error)}, error=True
        )

    def started(self, job: Job) -> None:
        """Emit ``keramos.<flow>.start``."""
        self.emit(
            f"keramos.{job.event}.start",
            {"request_id": job.request_id, "resource_id": job.resource_id, "version": job.version},
        )

    def succeeded(self, job: Job, result: dict[str, Any], duration: float) -> None:
        """Emit ``keramos.<flow>.end``."""
        self.emit(
            f"keramos.{job.event}.end",
            {
                "request_id": job.request_id,
                "resource_id": job.resource_id,
                "duration": duration,
                "result": result,
            },
        )

    def failed(self, job: Job, failure: FlowFailed, duration: float) -> None:
        """Emit ``keramos.<flow>.error``."""
        self.emit(
            f"keramos.{job.event}.error",
            {
                "request_id": job.request_id,
                "resource_id": job.resource_id,
                "duration": duration,
                "error": failure.to_dict(),
            },
            error=True,
        )


class LogObserver(EventObserver):
    """Writes the events to the log (a runner's observer when it is given none)."""

    def emit(self, event_type: str, payload: dict[str, Any], *, error: bool = False) -> None:
        """Log the event, at ERROR for ``.error`` events and INFO otherwise."""
        LOG.log(logging.ERROR if error else logging.INFO, "event %s %s", event_type, payload)


class ProgressObserver(RunObserver):
    """Calls ``callback(task_name, state, details)`` on every task state change.

    The form of the testing kit's ``progress=`` and ``on_progress=`` arguments.
    """

    def __init__(self, callback: ProgressCallback) -> None:
        self.callback = callback

    def task_state_changed(
        self, job: Job, task_name: str, state: str, details: Mapping[str, Any]
    ) -> None:
        """Hand the change to the callback."""
        self.callback(task_name, state, details)
