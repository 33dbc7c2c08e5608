"""What a cast carries besides its payload: the request id that names it from end to end."""

from __future__ import annotations

import uuid


def new_request_id() -> str:
    """A request id in the OpenStack form ``req-<uuid4>``."""
    return f"req-{uuid.uuid4()}"
