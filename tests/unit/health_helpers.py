"""Helpers shared by the health tests: a stand-in for ``KeramosClient.cast`` and a poll loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class CastRecorder:
    """Stands in for ``KeramosClient.cast``: records casts, or fails like an unreachable broker."""

    def __init__(self) -> None:
        self.casts: list[tuple[str, dict, str]] = []
        self.fail = False

    def __call__(self, event: str, payload: dict, request_id: str | None = None) -> str:
        if self.fail:
            raise ConnectionError("broker unreachable")
        assert request_id is not None, "the health manager records every cast before casting it"
        self.casts.append((event, payload, request_id))
        return request_id

    def events(self) -> list[tuple[str, dict]]:
        """(event, payload) of each cast, in order."""
        return [(event, payload) for event, payload, _ in self.casts]


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something true, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not met after {timeout}s"
        time.sleep(0.02)
