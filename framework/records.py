"""The records the state store keeps: tasks, amphorae, certificates and images.

Each record is a dataclass whose first field is its key. State store drivers persist every field;
adding a field with a default is a compatible change (the SQLAlchemy store adds the column).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, ClassVar


def utcnow() -> dt.datetime:
    """The current time, timezone-aware in UTC (what every record stores)."""
    return dt.datetime.now(dt.timezone.utc)


class TaskState:
    """Glance-style states of a task (one cast, one flow run)."""

    PENDING = "pending"
    PROCESSING = "processing"
    SUCCESS = "success"
    FAILURE = "failure"
    ALL = (PENDING, PROCESSING, SUCCESS, FAILURE)
    TERMINAL = (SUCCESS, FAILURE)


class AmphoraStatus:
    """Lifecycle states of an amphora, as Octavia names them."""

    PENDING_CREATE = "PENDING_CREATE"
    BOOTING = "BOOTING"
    READY = "READY"
    PENDING_FAILOVER = "PENDING_FAILOVER"
    PENDING_DELETE = "PENDING_DELETE"
    DELETED = "DELETED"
    ERROR = "ERROR"


@dataclasses.dataclass
class Record:
    """Base of every record; ``key`` names the field that identifies it."""

    key: ClassVar[str]
    table: ClassVar[str]

    @property
    def key_value(self) -> str:
        """The value of this record's key field."""
        return getattr(self, self.key)

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict (datetimes left as datetimes)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TaskRecord(Record):
    """One cast and the flow it ran: what ``keramos status REQUEST_ID`` shows.

    ``digest`` is the cast's :func:`~keramos.framework.envelope.envelope_digest` (another cast
    with the same request id and digest is a redelivery of this one); ``owner`` the host whose
    worker took it and ``flow_uuid`` the flow detail it runs from (``None`` for a refused cast,
    and ``owner`` ``None`` for a run that no worker resumes: without persistence). ``steps`` is
    each task's final state once the flow ended (:mod:`keramos.framework.steps`).
    """

    key: ClassVar[str] = "request_id"
    table: ClassVar[str] = "tasks"

    request_id: str
    event: str
    state: str = TaskState.PENDING
    resource_id: str | None = None
    message: str | None = None
    error_type: str | None = None
    result: dict[str, Any] | None = None
    created_at: dt.datetime = dataclasses.field(default_factory=utcnow)
    updated_at: dt.datetime = dataclasses.field(default_factory=utcnow)
    digest: str | None = None
    owner: str | None = None
    flow_uuid: str | None = None
    steps: list[dict[str, Any]] | None = None


@dataclasses.dataclass
class AmphoraRecord(Record):
    """An amphora the controller manages.

    ``proxy`` and ``network_id``, reported by the compute driver, are the route to an amphora
    the controller cannot reach directly: its agent answers at ``address`` inside that network,
    through that ``keramos-proxy``.
    """

    key: ClassVar[str] = "amphora_id"
    table: ClassVar[str] = "amphorae"

    amphora_id: str
    status: str = AmphoraStatus.PENDING_CREATE
    image_id: str | None = None
    compute_id: str | None = None
    address: str | None = None
    agent_port: int | None = None
    port_id: str | None = None
    cert_serial: str | None = None
    config_version: int = 0
    error: str | None = None
    activation_token_hash: str | None = None
    activated_at: dt.datetime | None = None
    activation_requested_at: dt.datetime | None = None
    request_id: str | None = None
    last_heartbeat_at: dt.datetime | None = None
    created_at: dt.datetime = dataclasses.field(default_factory=utcnow)
    updated_at: dt.datetime = dataclasses.field(default_factory=utcnow)
    proxy: str | None = None
    network_id: str | None = None


@dataclasses.dataclass
class CertificateRecord(Record):
    """A certificate issued by a Keramos CA (server or client)."""

    key: ClassVar[str] = "serial"
    table: ClassVar[str] = "certificates"

    serial: str
    kind: str
    subject: str
    not_after: dt.datetime
    amphora_id: str | None = None
    cert_ref: str | None = None
    status: str = "active"
    revoked_at: dt.datetime | None = None
    previous_serial: str | None = None
    created_at: dt.datetime = dataclasses.field(default_factory=utcnow)
    updated_at: dt.datetime = dataclasses.field(default_factory=utcnow)


@dataclasses.dataclass
class ImageRecord(Record):
    """An image and the outcome of its signature verification."""

    key: ClassVar[str] = "image_id"
    table: ClassVar[str] = "images"

    image_id: str
    status: str = "queued"
    checksum: str | None = None
    size: int | None = None
    message: str | None = None
    signer: str | None = None
    certificate_uuid: str | None = None
    created_at: dt.datetime = dataclasses.field(default_factory=utcnow)
    updated_at: dt.datetime = dataclasses.field(default_factory=utcnow)


@dataclasses.dataclass
class LoadBalancerRecord(Record):
    """A load balancer's HAProxy configuration, as pushed to its amphorae.

    ``config_version`` is the last version handed out (it only grows, also when a push fails, so
    that no version number is ever used for two configurations); ``running_version`` and
    ``config`` are those of the last push every amphora accepted.
    """

    key: ClassVar[str] = "lb_id"
    table: ClassVar[str] = "loadbalancers"

    lb_id: str
    config_version: int = 0
    running_version: int = 0
    config: str | None = None
    description: dict[str, Any] | None = None
    created_at: dt.datetime = dataclasses.field(default_factory=utcnow)
    updated_at: dt.datetime = dataclasses.field(default_factory=utcnow)


RECORD_TYPES: tuple[type[Record], ...] = (
    TaskRecord,
    AmphoraRecord,
    CertificateRecord,
    ImageRecord,
    LoadBalancerRecord,
)
