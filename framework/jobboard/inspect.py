"""What operators see of the jobboard: every job with its claim, attempts and progress.

Reads the board (listings, owners, claim times) and the persistence backend (attempts, atom
states); parked jobs, which left the board, come from the state store (``JobParked`` failures)
and their logbooks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import Iterator
from typing import Any

from oslo_config import cfg
from taskflow import exceptions as tf_exceptions
from taskflow import states
from taskflow.persistence import models

from keramos.framework import loader
from keramos.framework.contracts import StateStore
from keramos.framework.errors import KeramosError
from keramos.framework.jobboard.board import jobboard_from_conf
from keramos.framework.jobboard.conductor import META_KEY, JobParked
from keramos.framework.persistence import get_backend
from keramos.framework.records import TaskRecord, utcnow

#: The state of a job that left the board without running to its end.
PARKED = "PARKED"


class InspectionError(KeramosError):
    """The persistence backend or the state store could not be read."""


@dataclasses.dataclass
class JobView:
    """One job as ``keramos jobs`` shows it."""

    request_id: str
    event: str
    state: str
    job_uuid: str | None = None
    owner: str | None = None
    claimed_at: dt.datetime | None = None
    created_at: dt.datetime | None = None
    attempts: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    flow_state: str | None = None
    tasks: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    message: str | None = None

    @property
    def claim_age(self) -> float | None:
        """Seconds since the job was last claimed (``None`` if it is not claimed)."""
        if self.claimed_at is None or self.state != states.CLAIMED:
            return None
        return max(0.0, (utcnow() - self.claimed_at).total_seconds())

    @property
    def last_completed(self) -> str | None:
        """The last task, in flow order, that completed (``None`` before the first)."""
        done = [name for name, state in self.tasks if state == states.SUCCESS]
        return done[-1] if done else None

    def to_dict(self) -> dict[str, Any]:
        """The view as JSON-compatible values."""
        return {
            "request_id": self.request_id,
            "event": self.event,
            "state": self.state,
            "job": self.job_uuid,
            "owner": self.owner,
            "claim_age": None if self.claim_age is None else round(self.claim_age, 1),
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "attempts": self.attempts,
            "flow_state": self.flow_state,
            "last_completed": self.last_completed,
            "tasks": [{"name": name, "state": state} for name, state in self.tasks],
            "message": self.message,
        }


def _aware(value: Any) -> dt.datetime | None:
    if not isinstance(value, dt.datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _fill_from_flow(view: JobView, flow_detail: models.FlowDetail | None) -> None:
    if flow_detail is None:
        return
    meta = (flow_detail.meta or {}).get(META_KEY, {})
    view.attempts = list(meta.get("attempts", []))
    view.flow_state = flow_detail.state
    states_by_name = {atom.name: atom.state for atom in flow_detail}
    order = meta.get("tasks") or sorted(states_by_name)
    view.tasks = [(name, states_by_name.get(name) or states.PENDING) for name in order]
    parked = meta.get("parked")
    if parked and not view.message:
        view.message = parked.get("reason")


class _Sources:
    """The persistence backend and the state store of ``conf``, closed on exit."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        try:
            self.backend = (
                get_backend(conf.persistence.connection, conf.persistence.synchronous)
                if conf.persistence.enabled
                else None
            )
        except Exception as error:
            raise InspectionError(f"cannot read the persistence backend: {_line(error)}") from error
        try:
            self.store: StateStore = loader.load_state_store(conf)
        except Exception as error:
            if self.backend is not None:
                self.backend.close()
            raise InspectionError(f"cannot read the state store: {_line(error)}") from error

    def flow_detail(self, flow_uuid: str | None) -> models.FlowDetail | None:
        if self.backend is None or not flow_uuid:
            return None
        with contextlib.suppress(tf_exceptions.NotFound), contextlib.closing(
            self.backend.get_connection()
        ) as connection:
            return connection.get_flow_details(flow_uuid)
        return None

    def flow_detail_of(self, request_id: str, event: str) -> models.FlowDetail | None:
        """The flow detail of a cast, found by its logbook's name (``event:request_id``)."""
        if self.backend is None:
            return None
        with contextlib.closing(self.backend.get_connection()) as connection:
            for book in connection.get_logbooks(lazy=True):
                if book.name == f"{event}:{request_id}":
                    for flow_detail in connection.get_flows_for_book(book.uuid):
                        return flow_detail
        return None

    def close(self) -> None:
        self.store.close()
        if self.backend is not None:
            self.backend.close()


def _line(error: BaseException) -> str:
    text = str(error).splitlines()
    return text[0] if text else type(error).__name__


@contextlib.contextmanager
def _sources(conf: cfg.ConfigOpts) -> Iterator[_Sources]:
    sources = _Sources(conf)
    try:
        yield sources
    finally:
        sources.close()


def _board_views(conf: cfg.ConfigOpts, sources: _Sources) -> list[JobView]:
    views = []
    with jobboard_from_conf(conf, sources.backend) as board:
        for job in board.iterjobs():
            details = job.details or {}
            state = job.state
            if state == states.COMPLETE:
                continue
            view = JobView(
                request_id=details.get("request_id", "?"),
                event=details.get("event", job.name),
                state=state,
                job_uuid=job.uuid,
                created_at=_aware(job.created_on),
            )
            if state == states.CLAIMED:
                owner = None
                with contextlib.suppress(TypeError):
                    owner = board.find_owner(job)
                view.owner = owner.get("owner") if isinstance(owner, dict) else owner
                view.claimed_at = _aware(job.last_modified)
            _fill_from_flow(view, sources.flow_detail(details.get("flow_uuid")))
            views.append(view)
    return views


def _parked_view(record: TaskRecord, sources: _Sources) -> JobView:
    view = JobView(
        request_id=record.request_id,
        event=record.event,
        state=PARKED,
        created_at=_aware(record.created_at),
        message=record.message,
    )
    _fill_from_flow(view, sources.flow_detail_of(record.request_id, record.event))
    return view


def list_jobs(conf: cfg.ConfigOpts, *, parked: bool = True) -> list[JobView]:
    """Every job on the board, then (``parked``) the parked ones; oldest first.

    :raises JobBoardUnavailable: the board cannot be reached within ``[jobboard]
        connect_timeout``.
    :raises InspectionError: the persistence backend or the state store cannot be read.
    """
    with _sources(conf) as sources:
        views = _board_views(conf, sources)
        views.sort(key=lambda view: view.created_at or utcnow())
        if parked:
            records = sources.store.find(TaskRecord, error_type=JobParked.__name__)
            records.sort(key=lambda record: record.updated_at)
            views += [_parked_view(record, sources) for record in records]
    return views


def find_job(conf: cfg.ConfigOpts, key: str) -> JobView | None:
    """The job whose uuid or request id is ``key`` (on the board or parked), or ``None``.

    :raises JobBoardUnavailable: the board cannot be reached.
    :raises InspectionError: the persistence backend or the state store cannot be read.
    """
    with _sources(conf) as sources:
        for view in _board_views(conf, sources):
            if key in (view.job_uuid, view.request_id):
                return view
        record = sources.store.get(TaskRecord, key)
        if record is None:
            return None
        if record.error_type == JobParked.__name__:
            return _parked_view(record, sources)
        view = JobView(
            request_id=record.request_id,
            event=record.event,
            state=record.state,
            created_at=_aware(record.created_at),
            message=record.message,
        )
        _fill_from_flow(view, sources.flow_detail_of(record.request_id, record.event))
        return view
