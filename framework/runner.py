"""The flow runner: validates an event, runs its taskflow flow durably, records and reports it.

The runner knows nothing of transports. It is called the same way by the RPC endpoint, by
``keramos run`` and by tests; it reports every run to its observers
(:class:`~keramos.framework.observers.RunObserver`: oslo.messaging notifications in a worker,
the log, progress lines or a list elsewhere).
"""

from __future__ import annotations

import contextlib
import contextvars
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
from taskflow import exceptions as tf_exceptions
from taskflow import states
from taskflow import storage as tf_storage
from taskflow.persistence import models
from taskflow.types import notifier as tf_notifier

from keramos.framework import engines, flowgraph, schema
from keramos.framework.contracts import Drivers, FlowFactory
from keramos.framework.envelope import (
    REQUEST_ID_PATTERN,
    VERSION_PATTERN,
    Job,
    canonical_json,
    envelope_digest,
    invalid_request_id,
    is_request_id,
)
from keramos.framework.errors import (
    Abandoned,
    Conflict,
    DuplicateRequest,
    FlowFailed,
    IncompatibleVersion,
    InvalidEvent,
    InvalidRequestId,
    PayloadError,
    UnknownEvent,
    describe,
    excerpt,
)
from keramos.framework.observers import Hook, LogObserver, RunObserver, notify, overrides
from keramos.framework.persistence import VolatileBackend
from keramos.framework.records import TaskRecord, TaskState, utcnow
from keramos.framework.steps import steps_in_order

LOG = logging.getLogger(__name__)

_FINISHED = (states.SUCCESS, states.REVERTED, states.FAILURE)
#: What a reservation holds: a record a caster saved before casting, that no cast took yet.
_RESERVED = {"state": (TaskState.PENDING,), "digest": (None,), "flow_uuid": (None,)}


def _is_reservation(record: TaskRecord) -> bool:
    """Whether ``record`` was saved by a caster before its cast (``pending``, no digest, no flow
    detail): the first cast under its request id takes it over."""
    return record.state == TaskState.PENDING and record.digest is None and record.flow_uuid is None


#: Event names a refusal may carry to its record and observers as they are.
_EVENT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


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


def _forget_half_saved_store(flow_detail: models.FlowDetail) -> None:
    """Give an empty, saved value to the flow's store if a worker died as taskflow saved it.

    Taskflow saves the detail holding the injected store without values first, then the values:
    killed in between, the flow would fail on every resume (``NoneType`` has no ``keys``). The
    engine injects the whole store again as it loads.
    """
    for atom_detail in flow_detail:
        if atom_detail.name == tf_storage.Storage.injector_name and atom_detail.results is None:
            atom_detail.results = {}
            atom_detail.state = states.SUCCESS


def _atom_names(flow: Any) -> list[str]:
    return [atom.name for atom in flowgraph.describe(flow).atoms()]


class _ContextCarryingExecutor(futurist.ThreadPoolExecutor):
    """The parallel engine's pool: runs each task in a copy of the context (``contextvars``) of
    the thread that submitted it, so that what an observer made current for the task as it was
    scheduled (its trace span) is current where it runs."""

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)


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
        #: Names the flow details this runner saves, so that resuming leaves them alone.
        self.incarnation = uuid.uuid4().hex
        # Flow details saved whose record insert did not confirm: a redelivery hands them out.
        self._unconfirmed: dict[str, tuple[Job, models.LogBook, models.FlowDetail]] = {}
        self._unconfirmed_lock = threading.Lock()
        self._task_orders: dict[str, list[str]] = {}
        self._compiled: dict[str, engines.CompiledFlow] = {}
        self._compiled_lock = threading.Lock()
        self._executor: futurist.ThreadPoolExecutor | None = None
        if conf.worker.engine == "parallel":
            self._executor = _ContextCarryingExecutor(max_workers=conf.worker.max_parallel_tasks)

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

    def _payload_json(self, envelope: Any) -> bytes | None:
        """The canonical JSON of the cast's payload, or ``None`` if it is not JSON data."""
        payload = envelope.get("payload") if isinstance(envelope, Mapping) else None
        try:
            return canonical_json(payload)
        except (TypeError, ValueError, RecursionError):
            return None

    def validate(self, envelope: Any, *, payload_json: bytes | None = None) -> Job:
        """Check a cast's envelope and payload; raise :class:`InvalidEvent` naming the problem.

        ``payload_json`` is the payload's canonical JSON when the caller has it already. The
        request id must match :data:`~keramos.framework.envelope.REQUEST_ID_PATTERN`; an
        unusable one raises :class:`InvalidRequestId` whose ``request_id`` is the id to record
        the refusal under. Messages quote at most an :func:`excerpt` of any bad value.
        """
        if not isinstance(envelope, Mapping):
            raise InvalidEvent(f"a cast must carry an object, not {type(envelope).__name__}")
        event = envelope.get("event")
        named = event if isinstance(event, str) and _EVENT_NAME.fullmatch(event) else None
        raw_id = envelope.get("request_id")
        if raw_id is None or raw_id == "":
            raise InvalidRequestId("the cast carries no request_id", event=named)
        if not is_request_id(raw_id):
            raise InvalidRequestId(
                f"request_id {excerpt(raw_id)} is not a request id ({REQUEST_ID_PATTERN}); "
                "the refusal is recorded under this id",
                request_id=invalid_request_id(raw_id),
                event=named,
            )
        request_id: str = raw_id
        if not isinstance(event, str) or event not in self.flows:
            known = ", ".join(sorted(self.flows))
            raise UnknownEvent(
                f"unknown event {excerpt(event)} (this worker serves: {known})",
                request_id=request_id,
                event=named,
            )
        factory = self.flows[event]
        version = envelope.get("version", factory.version)
        if not isinstance(version, str) or not re.fullmatch(VERSION_PATTERN, version):
            raise IncompatibleVersion(
                f"version {excerpt(version)} is not MAJOR.MINOR (1 to 4 digits each)",
                request_id=request_id,
                event=event,
            )
        if not _version_compatible(factory.version, version):
            raise IncompatibleVersion(
                f"{event} {version} is not served (this worker serves {event} {factory.version})",
                request_id=request_id,
                event=event,
            )
        self._check_size(event, request_id, envelope.get("payload"), payload_json)
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

    def _check_size(self, event: str, request_id: str, payload: Any, payload_json: bytes | None) -> None:
        if payload_json is None:
            payload_json = self._payload_json({"payload": payload})
        if payload_json is None:
            raise PayloadError(f"{event}: payload is not JSON data", request_id=request_id, event=event)
        limit = self.conf.worker.max_payload_bytes
        if len(payload_json) > limit:
            raise PayloadError(
                f"{event}: payload is {len(payload_json)} bytes of JSON, more than "
                f"[worker] max_payload_bytes ({limit})",
                request_id=request_id,
                event=event,
            )
        try:
            payload_json.decode("utf-8")
        except UnicodeDecodeError as error:
            raise PayloadError(
                f"{event}: payload holds a lone surrogate (not Unicode text) at byte {error.start}",
                request_id=request_id,
                event=event,
            ) from None

    def reject(
        self,
        error: InvalidEvent,
        *,
        digest: str | None = None,
        observers: Sequence[RunObserver] = (),
    ) -> InvalidEvent | None:
        """Record and report a cast that will not run: a failed task record, log, observers.

        The record is inserted only if its request id is new: a known request id keeps its
        record, and the cast is then dropped as a redelivery (same ``digest``; ``None`` is
        returned) or refused as a :class:`DuplicateRequest` (returned). A cast without a
        request id is reported, not recorded. Otherwise ``error`` is returned. ``observers``
        are told of this cast only, after the runner's own.
        """
        if error.request_id:
            record = TaskRecord(
                request_id=error.request_id,
                event=error.event or "",
                state=TaskState.FAILURE,
                message=str(error),
                error_type=type(error).__name__,
                digest=digest,
            )
            stored, inserted = self.drivers.state_store.insert_if_absent(record)
            if not inserted and not self._take_reservation(stored, record):
                known = self.drivers.state_store.get(TaskRecord, error.request_id) or stored
                return self._known(error.request_id, error.event, digest, known, observers)
        LOG.error("rejected cast %s: %s", error.request_id or "(no request id)", error)
        self._notify(
            "rejected", observers, error.request_id, error.event, error, request_id=error.request_id
        )
        return error

    def _known(
        self,
        request_id: str,
        event: str | None,
        digest: str | None,
        known: TaskRecord,
        observers: Sequence[RunObserver],
    ) -> Accepted | InvalidEvent | None:
        """What becomes of a cast whose request id is recorded already (``known``).

        The same digest is a redelivery: dropped, unless this process saved its flow detail and
        could not confirm its record (then it is handed out now). Another digest is refused
        as a :class:`DuplicateRequest`. ``known`` is never changed.
        """
        if digest is not None and known.digest == digest:
            with self._unconfirmed_lock:
                unconfirmed = self._unconfirmed.pop(known.flow_uuid or "", None)
            if unconfirmed is not None and known.state == TaskState.PENDING:
                job, book, flow_detail = unconfirmed
                LOG.info("cast %s delivered again: its record is there now, its flow runs", request_id)
                return Accepted(job, book, flow_detail)
            LOG.info("dropped cast %s: delivered again, already taken (%s)", request_id, known.state)
            return None
        error = DuplicateRequest(
            f"request id {request_id} is already taken by another cast "
            f"({excerpt(known.event or '(refused)')}, {known.state}); that cast's record is kept",
            request_id=request_id,
            event=event,
        )
        LOG.error("refused cast %s: %s", request_id, error)
        self._notify("rejected", observers, request_id, event, error, request_id=request_id)
        return error

    def accept(
        self, job: Job, *, digest: str | None = None, observers: Sequence[RunObserver] = ()
    ) -> Accepted | InvalidEvent | None:
        """Save a validated job's flow detail, then record it ``pending``; return what to :meth:`run`.

        The flow detail (it carries the payload) is saved first and the record inserted second,
        only if its request id is new (or reserved: a ``pending`` record a caster saved before
        casting, with no digest, is taken over by compare and set): a crash between the two
        leaves a flow detail without a
        record, which :meth:`resume_unfinished` records and runs (or discards, if the request
        id was taken meanwhile); never a record that nothing will finish. A request id already
        known returns what :meth:`reject` says of it (``None``: a redelivery, dropped; a
        :class:`DuplicateRequest`: refused). If the job cannot be saved or recorded, the cast is
        reported as rejected (with the error) and the error raised.
        """
        store = self.drivers.state_store
        saved: tuple[models.LogBook, models.FlowDetail] | None = None
        try:
            known = store.get(TaskRecord, job.request_id)
            if known is not None and not _is_reservation(known):
                return self._known(job.request_id, job.event, digest, known, observers)
            book, flow_detail = saved = self._new_flow_detail(job, digest)
            record = TaskRecord(
                request_id=job.request_id,
                event=job.event,
                resource_id=job.resource_id,
                digest=digest,
                owner=self.conf.host if self.durable else None,
                flow_uuid=flow_detail.uuid,
            )
            stored, inserted = store.insert_if_absent(record)
            if not inserted and self._take_reservation(stored, record):
                inserted = True
            elif not inserted:
                stored = store.get(TaskRecord, job.request_id) or stored
        except Exception as error:
            if saved is not None:
                # The insert may have committed before it failed: a redelivery to this process
                # then finds the record and hands this flow detail out instead of dropping it.
                with self._unconfirmed_lock:
                    self._unconfirmed[saved[1].uuid] = (job, *saved)
            LOG.exception("could not accept cast %s", job.request_id)
            self._notify(
                "rejected", observers, job.request_id, job.event, error, request_id=job.request_id
            )
            raise
        if not inserted:
            self._discard(book, f"request {job.request_id} was taken by another delivery meanwhile")
            return self._known(job.request_id, job.event, digest, stored, observers)
        self._notify("accepted", observers, job, request_id=job.request_id)
        return Accepted(job, book, flow_detail)

    def _take_reservation(self, known: TaskRecord, record: TaskRecord) -> bool:
        """Turn ``known``, if it is a reservation, into ``record`` (compare and set); whether it did."""
        if not _is_reservation(known):
            return False
        changes = {
            name: getattr(record, name)
            for name in ("event", "state", "message", "error_type", "digest", "owner", "flow_uuid")
        }
        if record.resource_id is not None:
            changes["resource_id"] = record.resource_id
        try:
            self.drivers.state_store.update_if(TaskRecord, known.request_id, _RESERVED, **changes)
        except Conflict:
            return False
        return True

    def _take(
        self,
        envelope: Any,
        observers: Sequence[RunObserver],
        trace_context: Mapping[str, str] | None,
    ) -> Accepted | InvalidEvent | None:
        payload_json = self._payload_json(envelope)
        digest = envelope_digest(envelope, payload_json)
        try:
            job = self.validate(envelope, payload_json=payload_json)
        except InvalidEvent as error:
            return self.reject(error, digest=digest, observers=observers)
        if trace_context:
            job = dataclasses.replace(job, trace_context=dict(trace_context))
        return self.accept(job, digest=digest, observers=observers)

    def take(
        self,
        envelope: Any,
        *,
        observers: Sequence[RunObserver] = (),
        trace_context: Mapping[str, str] | None = None,
    ) -> Accepted | None:
        """Take one cast in: validate it and record it durably; return what to :meth:`run`.

        ``None`` means there is nothing to run: the cast was refused (reported, and recorded as
        a failure under its request id, or under ``req-invalid-…`` when its request id is
        unusable), or its request id is known already (a redelivery of the same cast is
        dropped, with a log line; another cast under a taken request id is refused and reported,
        and the first cast's record kept). An exception means the cast could not be recorded
        (the state store or the persistence backend failed): the caller must not acknowledge it
        to the broker, so that it is delivered again.

        ``trace_context`` is the caster's trace context (:attr:`Job.trace_context`), kept with
        the accepted cast.
        """
        outcome = self._take(envelope, observers, trace_context)
        return outcome if isinstance(outcome, Accepted) else None

    def submit(self, envelope: Any, *, observers: Sequence[RunObserver] = ()) -> dict:
        """Validate, record and run one cast; invalid casts are rejected and reported.

        ``observers`` watch this cast only, after the runner's own. Returns the result, raises
        :class:`FlowFailed` or :class:`InvalidEvent` (a :class:`DuplicateRequest` when the
        request id is known already, also for the same cast again: nothing runs twice).
        """
        outcome = self._take(envelope, observers, None)
        if isinstance(outcome, InvalidEvent):
            raise outcome
        if outcome is None:
            request_id = envelope.get("request_id") if isinstance(envelope, Mapping) else None
            raise DuplicateRequest(
                f"request id {excerpt(request_id)} was taken already by this very cast; it does "
                "not run again (see its record)",
                request_id=request_id if is_request_id(request_id) else None,
            )
        return self.run(outcome.job, outcome.book, outcome.flow_detail, observers=observers)

    def _new_flow_detail(self, job: Job, digest: str | None) -> tuple[models.LogBook, models.FlowDetail]:
        book = models.LogBook(f"{job.event}:{job.request_id}")
        flow_detail = models.FlowDetail(job.event, str(uuid.uuid4()))
        flow_detail.meta = {
            "event": job.event,
            "request_id": job.request_id,
            "payload": job.payload,
            "version": job.version,
            "owner": self.conf.host,
            "digest": digest,
            "incarnation": self.incarnation,
            "trace_context": dict(job.trace_context),
        }
        book.add(flow_detail)
        with contextlib.closing(self.backend.get_connection()) as connection:
            connection.save_logbook(book)
        return book, flow_detail

    def _discard(self, book: models.LogBook, why: str) -> None:
        """Destroy a logbook whose flow must never run; a failure is logged (the next start of
        this host discards it again)."""
        LOG.info("discarding flow detail %s: %s", book.uuid, why)
        try:
            with contextlib.closing(self.backend.get_connection()) as connection:
                connection.destroy_logbook(book.uuid)
        except Exception:
            LOG.exception("could not discard flow detail %s; the next start discards it", book.uuid)

    def _load_engine(self, job: Job, book: models.LogBook, flow_detail: models.FlowDetail):
        _forget_half_saved_store(flow_detail)
        factory = self.flows[job.event]
        flow = factory.flow()
        self.task_order(job.event, flow)
        options: dict[str, Any] = {}
        if self._executor is not None:
            options["executor"] = self._executor
        return engines.load(
            flow,
            flow_detail,
            self.backend,
            kind=self.conf.worker.engine,
            store=job.store,
            options=options,
            compiled=self._compiled_flow(job.event, flow) if factory.reusable else None,
        )

    def _compiled_flow(self, event: str, flow: Any) -> engines.CompiledFlow:
        """The compiled flow of a ``reusable`` factory's one flow: compiled by its first run."""
        with self._compiled_lock:
            compiled = self._compiled.get(event)
            if compiled is None or compiled.flow is not flow:
                compiled = self._compiled[event] = engines.CompiledFlow(flow)
            return compiled

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
        engine = None
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
                steps=self._final_steps(job.event, engine),
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
        store.update(
            TaskRecord,
            job.request_id,
            state=TaskState.SUCCESS,
            result=result,
            steps=self._final_steps(job.event, engine),
        )
        notify(everyone, "succeeded", job, result, duration, request_id=job.request_id)
        LOG.info("flow %s succeeded (%s, %.3fs)", job.event, job.request_id, duration)
        self._forget(book)
        return result

    def task_order(self, event: str, flow: Any = None) -> list[str]:
        """The names of the atoms of ``event``'s flow, in flow order: found once per event, in
        ``flow`` (one of ``event``'s, already built) if given, else in a flow built for it."""
        order = self._task_orders.get(event)
        if order is None:
            order = self._task_orders[event] = _atom_names(flow if flow is not None else self.flows[event].flow())
        return order

    def _final_steps(self, event: str, engine: Any) -> list[dict[str, Any]] | None:
        """Each task's state once the run ended (``None`` if its engine never loaded)."""
        if engine is None:
            return None
        try:
            storage = engine.storage
            order = self.task_order(event)
            states_by_name = {name: state for name, (state, _intent) in storage.get_atoms_states(order).items()}
            return steps_in_order(order, states_by_name, storage.get_execute_failures())
        except Exception:
            LOG.exception("could not collect the steps of a %s run; its record has none", event)
            return None

    def progress(self, request_id: str) -> dict[str, Any] | None:
        """The task record of ``request_id`` with its ``steps`` so far, or ``None`` if unknown.

        A run that ended has its final steps in its record; a running one's come from its flow
        detail in the persistence backend (none without persistence, or before the flow started).
        """
        record = self.drivers.state_store.get(TaskRecord, request_id)
        if record is None:
            return None
        progress = jsonable(record.to_dict())
        if record.state in TaskState.TERMINAL or not self.durable or not record.flow_uuid:
            return progress
        if record.event not in self.flows:
            return progress
        try:
            with contextlib.closing(self.backend.get_connection()) as connection:
                flow_detail = connection.get_flow_details(record.flow_uuid)
        except tf_exceptions.NotFound:
            return progress
        states_by_name = {atom.name: atom.state for atom in flow_detail}
        failed = [atom.name for atom in flow_detail if atom.failure is not None]
        progress["steps"] = steps_in_order(self.task_order(record.event), states_by_name, failed)
        return progress

    def accepted_flow(self, record: TaskRecord) -> Accepted | None:
        """The accepted cast ``record`` names (its logbook and flow detail), read back from the
        persistence backend; ``None`` if it is not there (or the runner keeps nothing)."""
        if not self.durable or not record.flow_uuid:
            return None
        with contextlib.closing(self.backend.get_connection()) as connection:
            name = f"{record.event}:{record.request_id}"
            for book in connection.get_logbooks(lazy=True):
                if book.name != name:
                    continue
                book = connection.get_logbook(book.uuid)
                flow_detail = book.find(record.flow_uuid)
                if flow_detail is None:
                    continue
                return Accepted(self._job_of(flow_detail.meta or {}), book, flow_detail)
        return None

    def _job_of(self, meta: Mapping[str, Any]) -> Job:
        """The job a flow detail's meta saved (by :meth:`_new_flow_detail`)."""
        return Job(
            meta["event"],
            meta["request_id"],
            meta["payload"],
            meta["version"],
            self._resource_id(meta["event"], meta["payload"]),
            trace_context=meta.get("trace_context") or {},
        )

    def unfinished(self, owner: str) -> list[tuple[Job, Any, Any]]:
        """The persisted flows ``owner`` started and did not finish, oldest first."""
        return self._persisted(owner, finished=False)

    def _persisted(self, owner: str, *, finished: bool) -> list[tuple[Job, Any, Any]]:
        """The persisted flows ``owner`` started that ended (``finished``) or did not, oldest
        first."""
        if not self.durable:
            return []
        found = []
        with contextlib.closing(self.backend.get_connection()) as connection:
            for book in connection.get_logbooks():
                for flow_detail in book:
                    meta = flow_detail.meta or {}
                    if meta.get("owner") != owner or (flow_detail.state in _FINISHED) != finished:
                        continue
                    if meta.get("event") not in self.flows:
                        LOG.warning(
                            "cannot resume %s: flow %s is not served here",
                            meta.get("request_id"),
                            meta.get("event"),
                        )
                        continue
                    job = self._job_of(meta)
                    found.append((book.created_at or utcnow(), job, book, flow_detail))
        found.sort(key=lambda item: item[0])
        return [(job, book, flow_detail) for _, job, book, flow_detail in found]

    def _claim(self, job: Job, flow_detail: models.FlowDetail, owner: str) -> TaskRecord:
        """The record of an unfinished flow detail, inserted now if the accept stopped before."""
        store = self.drivers.state_store
        claim = TaskRecord(
            request_id=job.request_id,
            event=job.event,
            resource_id=job.resource_id,
            digest=(flow_detail.meta or {}).get("digest"),
            owner=owner,
            flow_uuid=flow_detail.uuid,
        )
        record = store.get(TaskRecord, job.request_id)
        if record is None:
            record, inserted = store.insert_if_absent(claim)
            if inserted:
                LOG.info("recorded %s: its worker saved its flow and stopped before recording it", job.request_id)
                return record
        if self._take_reservation(record, claim):
            LOG.info("recorded %s: its worker saved its flow and stopped before recording it", job.request_id)
            return claim
        return store.get(TaskRecord, job.request_id) or record

    def resume_unfinished(self, owner: str) -> int:
        """Finish what ``owner`` (this host) left when it stopped: run every unfinished flow of
        it from its last completed task, then fail the records no flow will finish.

        A flow detail saved by an accept that stopped before its record was inserted gets its
        record now and runs, unless its request id was taken meanwhile (by a redelivery): it is
        then discarded, as is any flow detail its record does not name. A ``pending`` or
        ``processing`` record of ``owner`` whose flow detail is gone is marked ``failure``
        (:class:`Abandoned`), and the record of a flow that ended before its end was recorded (the
        worker stopped in between) gets that end (:meth:`_record_end`). Flows this runner
        accepted itself are left alone. Returns how many flows were resumed; a resumed flow that
        fails is reported like any other.
        """
        resumed = 0
        for job, book, flow_detail in self.unfinished(owner):
            if (flow_detail.meta or {}).get("incarnation") == self.incarnation:
                continue
            record = self._claim(job, flow_detail, owner)
            if record.flow_uuid not in (None, flow_detail.uuid):
                self._discard(book, f"request {job.request_id} runs from flow detail {record.flow_uuid}")
                continue
            if record.state in TaskState.TERMINAL:
                LOG.info("not resuming %s: it ended already (%s)", job.request_id, record.state)
                self._forget(book)
                continue
            LOG.info("resuming flow %s (%s) from its last completed task", job.event, job.request_id)
            with contextlib.suppress(FlowFailed):
                self.run(job, book, flow_detail)
            resumed += 1
        for job, book, flow_detail in self._persisted(owner, finished=True):
            if (flow_detail.meta or {}).get("incarnation") != self.incarnation:
                self._record_end(job, book, flow_detail)
        if self.durable:
            self._fail_abandoned(owner)
        return resumed

    def _record_end(self, job: Job, book: models.LogBook, flow_detail: models.FlowDetail) -> None:
        """Record how a flow ended whose record still says it runs: a successful one is run
        again (nothing is left to run: the engine only reads its results back); a reverted one
        fails its record with the first failure its atoms kept."""
        store = self.drivers.state_store
        record = store.get(TaskRecord, job.request_id)
        if record is None or record.flow_uuid != flow_detail.uuid or record.state in TaskState.TERMINAL:
            self._forget(book)
            return
        LOG.info("recording the end of flow %s (%s): %s", job.event, job.request_id, flow_detail.state)
        if flow_detail.state == states.SUCCESS:
            with contextlib.suppress(FlowFailed):
                self.run(job, book, flow_detail)
            return
        failed = next((atom.failure for atom in flow_detail if atom.failure is not None), None)
        message, error_type = f"the flow ended {flow_detail.state}", "FlowFailed"
        if failed is not None:
            message = failed.exception_str
            error_type = failed.to_dict()["exc_type_names"][0].rpartition(".")[2]
        store.update(
            TaskRecord, job.request_id, state=TaskState.FAILURE, message=message, error_type=error_type
        )
        self._forget(book)

    def _fail_abandoned(self, owner: str) -> None:
        store = self.drivers.state_store
        active = (TaskState.PENDING, TaskState.PROCESSING)
        for state in active:
            for record in store.find(TaskRecord, owner=owner, state=state):
                if record.flow_uuid is None or self._flow_detail_exists(record.flow_uuid):
                    continue
                error = Abandoned(
                    f"worker {owner} stopped and the saved progress of this cast is gone; it will "
                    "not run to its end: cast it again under a new request id"
                )
                with contextlib.suppress(Conflict):
                    store.update_if(
                        TaskRecord,
                        record.request_id,
                        {"state": active, "flow_uuid": (record.flow_uuid,)},
                        state=TaskState.FAILURE,
                        message=str(error),
                        error_type=type(error).__name__,
                    )
                    LOG.error("failed abandoned cast %s: %s", record.request_id, error)

    def _flow_detail_exists(self, flow_uuid: str) -> bool:
        with contextlib.closing(self.backend.get_connection()) as connection:
            try:
                connection.get_flow_details(flow_uuid, lazy=True)
            except tf_exceptions.NotFound:
                return False
        return True
