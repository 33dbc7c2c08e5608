"""The flow runner: validates an event, runs its taskflow flow durably, records and reports it.

The runner knows nothing of transports. It is called the same way by the RPC endpoint, by
``keramos run`` and by tests; it reports every run to its observers
(:class:`~keramos.framework.observers.RunObserver`: oslo.messaging notifications in a worker,
the log, progress lines or a list elsewhere).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import re
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import futurist
from oslo_config import cfg
from oslo_log import log as logging
from taskflow import engines, states
from taskflow import exceptions as tf_exceptions
from taskflow.persistence import models
from taskflow.types import notifier as tf_notifier

from keramos.framework import schema
from keramos.framework.contracts import Drivers, FlowFactory
from keramos.framework.envelope import Job
from keramos.framework.errors import (
    FlowFailed,
    IncompatibleVersion,
    InvalidEvent,
    PayloadError,
    UnknownEvent,
    describe,
)
from keramos.framework.observers import Hook, LogObserver, RunObserver, notify, overrides
from keramos.framework.persistence import VolatileBackend
from keramos.framework.records import TaskRecord, TaskState, utcnow

LOG = logging.getLogger(__name__)

_FINISHED = (states.SUCCESS, states.REVERTED, states.FAILURE)


def jsonable(value: Any) -> Any:
    """Convert what tasks provide (dataclasses, datetimes, bytes) to JSON-compatible values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(item) for item in value]
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _version_compatible(served: str, asked: str) -> bool:
    served_major, served_minor = (int(part) for part in served.split("."))
    asked_major, asked_minor = (int(part) for part in asked.split("."))
    return served_major == asked_major and asked_minor <= served_minor


@dataclasses.dataclass(frozen=True)
class Accepted:
    """A cast recorded ``pending`` with its durable flow detail: what :meth:`FlowRunner.run` takes."""

    job: Job
    book: models.LogBook
    flow_detail: models.FlowDetail


class FlowRunner:
    """Runs the flows of one worker (or one CLI or test process).

    ``backend`` is a taskflow persistence backend, or ``None`` to run without durability
    (then nothing about a run outlives it).
    ``observers`` watch every run (see :mod:`keramos.framework.observers`); ``None`` means one
    :class:`~keramos.framework.observers.LogObserver`, an empty list none at all.
    The runner owns the thread pool the parallel engine shares between runs.
    """

    def __init__(
        self,
        conf: cfg.ConfigOpts,
        drivers: Drivers,
        flows: Mapping[str, FlowFactory],
        *,
        observers: Iterable[RunObserver] | None = None,
        backend: Any = None,
    ) -> None:
        self.conf = conf
        self.drivers = drivers
        self.flows = dict(flows)
        self._observers: tuple[RunObserver, ...] = (
            (LogObserver(),) if observers is None else tuple(observers)
        )
        self._observers_lock = threading.Lock()
        self.backend = backend if backend is not None else VolatileBackend()
        self.durable = backend is not None
        self._executor: futurist.ThreadPoolExecutor | None = None
        if conf.worker.engine == "parallel":
            self._executor = futurist.ThreadPoolExecutor(max_workers=conf.worker.max_parallel_tasks)

    @property
    def observers(self) -> tuple[RunObserver, ...]:
        """The observers every run is reported to, in the order they are called."""
        return self._observers

    def add_observer(self, observer: RunObserver) -> None:
        """Report the runs that start from now on to ``observer`` too (after those registered)."""
        with self._observers_lock:
            self._observers = (*self._observers, observer)

    def remove_observer(self, observer: RunObserver) -> None:
        """Stop reporting runs to ``observer``; runs already started report to it to their end."""
        with self._observers_lock:
            self._observers = tuple(known for known in self._observers if known is not observer)

    def _notify(
        self, hook: Hook, run_observers: Sequence[RunObserver], *args: Any, request_id: str | None
    ) -> None:
        notify((*self._observers, *run_observers), hook, *args, request_id=request_id)

    def _resource_id(self, event: str, payload: Mapping[str, Any]) -> str | None:
        field = self.flows[event].resource_field
        return payload.get(field) if field else None

    def close(self) -> None:
        """Stop the shared thread pool and the persistence backend."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self.backend.close()

    def validate(self, envelope: Any) -> Job:
        """Check a cast's envelope and payload; raise :class:`InvalidEvent` naming the problem."""
        if not isinstance(envelope, Mapping):
            raise InvalidEvent(f"a cast must carry an object, not {type(envelope).__name__}")
        request_id = envelope.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise InvalidEvent("the cast carries no request_id", event=envelope.get("event"))
        event = envelope.get("event")
        if not isinstance(event, str) or event not in self.flows:
            known = ", ".join(sorted(self.flows))
            raise UnknownEvent(
                f"unknown event {event!r} (this worker serves: {known})",
                request_id=request_id,
                event=event if isinstance(event, str) else None,
            )
        factory = self.flows[event]
        version = envelope.get("version", factory.version)
        if not isinstance(version, str) or not re.fullmatch(r"\d+\.\d+", version):
            raise IncompatibleVersion(
                f"version {version!r} is not MAJOR.MINOR", request_id=request_id, event=event
            )
        if not _version_compatible(factory.version, version):
            raise IncompatibleVersion(
                f"{event} {version} is not served (this worker serves {event} {factory.version})",
                request_id=request_id,
                event=event,
            )
        try:
            payload = schema.validate(factory.payload, envelope.get("payload"))
        except PayloadError as error:
            raise PayloadError(f"{event}: {error}", request_id=request_id, event=event) from None
        return Job(
            event=event,
            request_id=request_id,
            payload=payload,
            version=version,
            resource_id=self._resource_id(event, payload),
        )

    def reject(self, error: InvalidEvent, *, observers: Sequence[RunObserver] = ()) -> None:
        """Report a cast that will not run: log, observers, and a failed task record.

        ``observers`` are told of this cast only, after the runner's own.
        """
        LOG.error("rejected cast %s: %s", error.request_id or "(no request id)", error)
        self._notify(
            "rejected", observers, error.request_id, error.event, error, request_id=error.request_id
        )
        if error.request_id:
            self.drivers.state_store.save(
                TaskRecord(
                    request_id=error.request_id,
                    event=error.event or "",
                    state=TaskState.FAILURE,
                    message=str(error),
                    error_type=type(error).__name__,
                )
            )

    def accept(
        self, job: Job, *, observers: Sequence[RunObserver] = ()
    ) -> tuple[models.LogBook, models.FlowDetail]:
        """Record a validated job as ``pending`` and save its flow detail.

        From here on the caller can ask for its status, and (when durable) a worker killed
        before the flow ends resumes it. Returns what :meth:`run` takes. If the job cannot be
        recorded, the cast is reported as rejected (with the error) and the error raised.
        """
        try:
            self.drivers.state_store.save(
                TaskRecord(request_id=job.request_id, event=job.event, resource_id=job.resource_id)
            )
            accepted = self._new_flow_detail(job)
        except Exception as error:
            LOG.exception("could not accept cast %s", job.request_id)
            self._notify(
                "rejected", observers, job.request_id, job.event, error, request_id=job.request_id
            )
            raise
        self._notify("accepted", observers, job, request_id=job.request_id)
        return accepted

    def take(self, envelope: Any, *, observers: Sequence[RunObserver] = ()) -> Accepted | None:
        """Take one cast in: validate it and record it durably; return what to :meth:`run`.

        ``None`` means the cast must not run (it was refused); it has been reported and recorded
        all the same. An exception means the cast could not be recorded (the state store or the
        persistence backend failed): the caller must not acknowledge it to the broker, so that it
        is delivered again.
        """
        try:
            job = self.validate(envelope)
        except InvalidEvent as error:
            self.reject(error, observers=observers)
            return None
        book, flow_detail = self.accept(job, observers=observers)
        return Accepted(job, book, flow_detail)

    def submit(self, envelope: Any, *, observers: Sequence[RunObserver] = ()) -> dict:
        """Validate, record and run one cast; invalid casts are rejected and reported.

        ``observers`` watch this cast only, after the runner's own. Returns the result, raises
        :class:`FlowFailed` or :class:`InvalidEvent`.
        """
        try:
            job = self.validate(envelope)
        except InvalidEvent as error:
            self.reject(error, observers=observers)
            raise
        book, flow_detail = self.accept(job, observers=observers)
        return self.run(job, book, flow_detail, observers=observers)

    def _new_flow_detail(self, job: Job) -> tuple[models.LogBook, models.FlowDetail]:
        book = models.LogBook(f"{job.event}:{job.request_id}")
        flow_detail = models.FlowDetail(job.event, str(uuid.uuid4()))
        flow_detail.meta = {
            "event": job.event,
            "request_id": job.request_id,
            "payload": job.payload,
            "version": job.version,
            "owner": self.conf.host,
        }
        book.add(flow_detail)
        with contextlib.closing(self.backend.get_connection()) as connection:
            connection.save_logbook(book)
        return book, flow_detail

    def _load_engine(self, job: Job, book: models.LogBook, flow_detail: models.FlowDetail):
        flow = self.flows[job.event].flow()
        options: dict[str, Any] = {"engine": self.conf.worker.engine}
        if self._executor is not None:
            options["executor"] = self._executor
        return engines.load(
            flow,
            store=job.store,
            book=book,
            flow_detail=flow_detail,
            backend=self.backend,
            **options,
        )

    def _forget(self, book) -> None:
        if not self.durable or book is None or self.conf.persistence.keep_completed:
            return
        with contextlib.closing(self.backend.get_connection()) as connection:
            connection.destroy_logbook(book.uuid)

    def run(
        self,
        job: Job,
        book: models.LogBook,
        flow_detail: models.FlowDetail,
        *,
        observers: Sequence[RunObserver] = (),
    ) -> dict[str, Any]:
        """Run an accepted job's flow to the end (or on from where it stopped); return its result.

        ``observers`` watch this run only, after the runner's own. On failure the flow has been
        reverted; the failure is recorded and reported and raised as :class:`FlowFailed`
        carrying the original error as ``cause``.
        """
        factory = self.flows[job.event]
        store = self.drivers.state_store
        started = time.monotonic()
        store.update(TaskRecord, job.request_id, state=TaskState.PROCESSING)
        # One list for the whole run: an observer sees all of it from started to its end, or none.
        everyone = (*self._observers, *observers)
        notify(everyone, "started", job, request_id=job.request_id)
        LOG.info("flow %s started (%s, resource %s)", job.event, job.request_id, job.resource_id)
        watching = [observer for observer in everyone if overrides(observer, "task_state_changed")]
        try:
            engine = self._load_engine(job, book, flow_detail)
            if watching:

                def task_state_changed(state: str, details: dict[str, Any]) -> None:
                    name = details.get("task_name") or details.get("retry_name", "?")
                    notify(
                        watching,
                        "task_state_changed",
                        job,
                        name,
                        state,
                        details,
                        request_id=job.request_id,
                    )

                engine.atom_notifier.register(tf_notifier.Notifier.ANY, task_state_changed)
            engine.run()
            result = jsonable({key: engine.storage.fetch(key) for key in factory.result_keys})
        except Exception as error:
            cause = error
            if isinstance(error, tf_exceptions.WrappedFailure):
                cause = next(iter(error)).exception or error
            duration = round(time.monotonic() - started, 6)
            described = describe(cause)
            store.update(
                TaskRecord,
                job.request_id,
                state=TaskState.FAILURE,
                message=described["message"],
                error_type=described["type"],
            )
            failure = FlowFailed(
                job.event, job.request_id, described["type"], described["message"], cause=cause
            )
            notify(everyone, "failed", job, failure, duration, request_id=job.request_id)
            LOG.error(
                "flow %s failed and was reverted (%s, %.3fs): %s: %s",
                job.event,
                job.request_id,
                duration,
                described["type"],
                described["message"],
            )
            self._forget(book)
            raise failure from cause
        duration = round(time.monotonic() - started, 6)
        store.update(TaskRecord, job.request_id, state=TaskState.SUCCESS, result=result)
        notify(everyone, "succeeded", job, result, duration, request_id=job.request_id)
        LOG.info("flow %s succeeded (%s, %.3fs)", job.event, job.request_id, duration)
        self._forget(book)
        return result

    def unfinished(self, owner: str) -> list[tuple[Job, Any, Any]]:
        """The persisted flows ``owner`` started and did not finish, oldest first."""
        if not self.durable:
            return []
        found = []
        with contextlib.closing(self.backend.get_connection()) as connection:
            for book in connection.get_logbooks():
                for flow_detail in book:
                    meta = flow_detail.meta or {}
                    if meta.get("owner") != owner or flow_detail.state in _FINISHED:
                        continue
                    if meta.get("event") not in self.flows:
                        LOG.warning(
                            "cannot resume %s: flow %s is not served here",
                            meta.get("request_id"),
                            meta.get("event"),
                        )
                        continue
                    job = Job(
                        meta["event"],
                        meta["request_id"],
                        meta["payload"],
                        meta["version"],
                        self._resource_id(meta["event"], meta["payload"]),
                    )
                    found.append((book.created_at or utcnow(), job, book, flow_detail))
        found.sort(key=lambda item: item[0])
        return [(job, book, flow_detail) for _, job, book, flow_detail in found]

    def resume_unfinished(self, owner: str) -> int:
        """Resume every unfinished flow of ``owner`` from its last completed task.

        Returns how many were resumed; a resumed flow that fails is reported like any other.
        """
        resumed = 0
        for job, book, flow_detail in self.unfinished(owner):
            LOG.info("resuming flow %s (%s) from its last completed task", job.event, job.request_id)
            if self.drivers.state_store.get(TaskRecord, job.request_id) is None:
                self.drivers.state_store.save(TaskRecord(request_id=job.request_id, event=job.event))
            with contextlib.suppress(FlowFailed):
                self.run(job, book, flow_detail)
            resumed += 1
        return resumed
