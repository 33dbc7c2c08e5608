"""What a cast is once validated (:class:`Job`), and the request id that names it end to end."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any


def new_request_id() -> str:
    """A request id in the OpenStack form ``req-<uuid4>``."""
    return f"req-{uuid.uuid4()}"


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

    @property
    def store(self) -> dict[str, Any]:
        """The flow's initial store: the payload and the request id."""
        return {**self.payload, "request_id": self.request_id}
