"""The errors Keramos raises: one root, a few categories that carry data.

Only :class:`KeramosError` subclasses cross the queue in a readable form: the worker records
``type(error).__name__`` and ``str(error)`` in the state store and in the ``.error`` notification.
Any other exception raised inside a flow arrives at the caller as :class:`FlowFailed` carrying
that exception's type name and message.
"""

from __future__ import annotations

import reprlib
from typing import Any

#: How many characters of a bad value an error message or a log line quotes (:func:`excerpt`).
EXCERPT_CHARS = 64

_REPR = reprlib.Repr()
_REPR.maxstring = EXCERPT_CHARS
_REPR.maxother = EXCERPT_CHARS
_REPR.maxlevel = 3
for _attribute in ("maxlist", "maxtuple", "maxdict", "maxset", "maxfrozenset", "maxdeque", "maxarray"):
    setattr(_REPR, _attribute, 4)


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """Quote a value for an error message or a log line: bounded, escaped, always printable.

    A string is quoted as ``repr`` quotes it (control characters and lone surrogates escaped) and
    cut after ``limit`` characters, followed by ``…(N bytes)`` giving its whole size in UTF-8;
    any other value by a bounded ``repr`` (nested containers abbreviated), cut likewise. The
    result is ASCII-escaped where it matters, so that it can be logged and stored anywhere.
    """
    if isinstance(value, str):
        shown = repr(value[:limit])
        if len(value) <= limit:
            return shown
        return f"{shown}…({len(value.encode('utf-8', 'surrogatepass'))} bytes)"
    if isinstance(value, (bytes, bytearray)):
        shown = repr(bytes(value[:limit]))
        return shown if len(value) <= limit else f"{shown}…({len(value)} bytes)"
    try:
        text = _REPR.repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else f"{text[:limit]}…"


class KeramosError(Exception):
    """Root of every error Keramos raises on purpose."""

    def to_dict(self) -> dict[str, str]:
        """The form in which this error is recorded and sent to callers."""
        return {"type": type(self).__name__, "message": str(self)}


class ConfigError(KeramosError):
    """The configuration is missing something or holds a value that cannot work."""


class PluginLoadError(KeramosError):
    """An entry point could not be loaded or does not honour its contract.

    The message names the entry-point group, the entry point and the cause on one line, so that
    an operator reading the start-up log knows which package to fix.
    """

    def __init__(self, group: str, name: str, cause: str) -> None:
        self.group = group
        self.name = name
        self.cause = cause
        super().__init__(f"{group}: entry point {name!r}: {cause}")


class InvalidEvent(KeramosError):
    """A cast that cannot be run: unknown event, incompatible version or bad payload.

    ``request_id`` is the id the caller gave the cast (or ``None`` if it gave none), so that the
    rejection can be reported back against it.
    """

    def __init__(self, message: str, *, request_id: str | None = None, event: str | None = None):
        self.request_id = request_id
        self.event = event
        super().__init__(message)


class UnknownEvent(InvalidEvent):
    """No flow is registered under the event's name."""


class IncompatibleVersion(InvalidEvent):
    """The caller speaks a version of the event this worker cannot serve."""


class PayloadError(InvalidEvent):
    """The payload does not match the event's schema (missing, unknown or mistyped fields)."""


class InvalidRequestId(InvalidEvent):
    """The cast carries no usable request id (missing, not a string, too long, odd characters).

    ``request_id`` is then the id the refusal is recorded under: ``req-invalid-`` followed by 16
    hexadecimal digits of the SHA-256 of the id given (see
    :func:`~keramos.framework.envelope.invalid_request_id`), or ``None`` if the cast gave none.
    """


class DuplicateRequest(InvalidEvent):
    """The request id is already taken by another cast (another event, version or payload).

    The first cast's record is kept as it is; this cast is refused and not recorded.
    """


class DriverError(KeramosError):
    """A driver failed to do what a task asked.

    ``retryable`` tells the task whether trying again may help (a timeout, a 503) or not
    (a refusal, a 4xx).
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        self.retryable = retryable
        super().__init__(message)


class AlreadyActivated(DriverError):
    """The agent refused an activation because it was activated already (it handed its token
    over once, and a token is handed over only once)."""


class NotFound(KeramosError):
    """A resource asked for by id does not exist."""


class Conflict(KeramosError):
    """A record is not in the state a change expects: another flow changed it first."""


class Abandoned(KeramosError):
    """A cast was taken but its flow will never end: its worker stopped and its saved progress
    is gone. Recorded as the cast's failure by the next start of that worker."""


class Timeout(KeramosError):
    """Something did not happen within the time it was given."""


class BrokerUnreachable(Timeout):
    """No host of the message broker accepted a connection within the time given."""


class FlowFailed(KeramosError):
    """A flow ended in failure and was reverted.

    ``error_type`` and ``error_message`` describe the error the flow failed on, also when that
    error was raised in another process and only its description crossed the queue.
    """

    def __init__(
        self,
        flow: str,
        request_id: str,
        error_type: str,
        error_message: str,
        *,
        cause: BaseException | None = None,
    ) -> None:
        self.flow = flow
        self.request_id = request_id
        self.error_type = error_type
        self.error_message = error_message
        self.cause = cause
        super().__init__(f"flow {flow} ({request_id}) failed: {error_type}: {error_message}")

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.error_type, "message": self.error_message}


def describe(error: BaseException) -> dict[str, str]:
    """Return the ``{"type", "message"}`` description of any exception."""
    if isinstance(error, KeramosError):
        return error.to_dict()
    return {"type": type(error).__name__, "message": str(error) or repr(error)}
