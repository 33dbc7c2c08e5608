"""What a cast is once validated (:class:`Job`), and the request id that names it end to end.

A request id is printable ASCII: a letter or digit, then up to 127 letters, digits and ``._:-``
(:data:`REQUEST_ID_PATTERN`); the OpenStack form ``req-<uuid>`` that :func:`new_request_id` makes
is one. A cast whose request id does not fit is refused and recorded under
:func:`invalid_request_id` of it. Two casts with one request id are the same cast when their
:func:`envelope_digest` is the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

#: What a request id must match, whole: at most 128 printable ASCII characters.
REQUEST_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"
#: What a version must match, whole: ``MAJOR.MINOR``, each of 1 to 4 ASCII digits.
VERSION_PATTERN = r"[0-9]{1,4}\.[0-9]{1,4}"
#: The prefix of the id under which a cast with an unusable request id is recorded.
INVALID_REQUEST_ID_PREFIX = "req-invalid-"

_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)


def new_request_id() -> str:
    """A request id in the OpenStack form ``req-<uuid4>``."""
    return f"req-{uuid.uuid4()}"


def is_request_id(value: Any) -> bool:
    """Whether ``value`` is a usable request id (a string matching :data:`REQUEST_ID_PATTERN`)."""
    return isinstance(value, str) and _REQUEST_ID.fullmatch(value) is not None


def canonical_json(value: Any) -> bytes:
    """``value`` as canonical JSON: sorted keys, no spaces, UTF-8 (lone surrogates kept as such).

    Raises :class:`TypeError`, :class:`ValueError` or :class:`RecursionError` for what is not
    JSON data.
    """
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


def invalid_request_id(raw: Any) -> str:
    """The id a cast whose request id ``raw`` is unusable is recorded under.

    ``req-invalid-`` and the first 16 hexadecimal digits of the SHA-256 of ``raw``: of its UTF-8
    bytes for a string (lone surrogates encoded as they are), of its canonical JSON otherwise
    (its ``repr`` if it is not JSON data). A caller can compute it to look the refusal up.
    """
    if isinstance(raw, str):
        data = raw.encode("utf-8", "surrogatepass")
    else:
        try:
            data = canonical_json(raw)
        except (TypeError, ValueError, RecursionError):
            data = repr(type(raw)).encode()
    return INVALID_REQUEST_ID_PREFIX + hashlib.sha256(data).hexdigest()[:16]


def envelope_digest(envelope: Any, payload_json: bytes | None = None) -> str:
    """SHA-256 (hexadecimal) of the canonical JSON of a cast's ``event``, ``version`` and
    ``payload``: what tells a redelivery (same digest) from another cast reusing its request id.

    ``payload_json`` is the payload's :func:`canonical_json` when the caller has it already. A
    payload that is not JSON data is digested by its type name only.
    """
    fields = envelope if isinstance(envelope, Mapping) else {}
    try:
        head = canonical_json({"event": fields.get("event"), "version": fields.get("version")})
    except (TypeError, ValueError, RecursionError):
        head = repr(type(fields.get("event"))).encode()
    if payload_json is None:
        try:
            payload_json = canonical_json(fields.get("payload"))
        except (TypeError, ValueError, RecursionError):
            payload_json = repr(type(fields.get("payload"))).encode()
    digest = hashlib.sha256(head)
    digest.update(b"\n")
    digest.update(payload_json)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Job:
    """A validated event, ready to run.

    ``resource_id`` is the payload's value of the flow's ``resource_field`` (``None`` if the flow
    names none).
    """

    event: str
    request_id: str
    payload: dict[str, Any]
    version: str
    resource_id: str | None = None
    #: The caster's W3C trace context (``traceparent``, ``tracestate``), when its cast carried
    #: one: what links the run's spans to the cast (:mod:`keramos.framework.tracing`).
    trace_context: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def store(self) -> dict[str, Any]:
        """The flow's initial store: the payload and the request id."""
        return {**self.payload, "request_id": self.request_id}
