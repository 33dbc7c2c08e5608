"""pytest plugin shipped with Keramos (entry point ``pytest11``): the ``keramos_worker`` fixture."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from keramos.framework.testing import InProcessWorker


@pytest.fixture
def keramos_worker(tmp_path) -> Iterator[Callable[..., InProcessWorker]]:
    """A factory of started :class:`InProcessWorker` s, all stopped after the test.

    ``keramos_worker(flows=[MyFlow], compute=MyDriver)`` takes the same arguments as
    :class:`InProcessWorker`; state lives under the test's ``tmp_path``.
    """
    started: list[InProcessWorker] = []

    def start(**kwargs: Any) -> InProcessWorker:
        kwargs.setdefault("state_path", tmp_path / f"keramos-worker-{len(started)}")
        worker = InProcessWorker(**kwargs).start()
        started.append(worker)
        return worker

    yield start
    for worker in reversed(started):
        worker.stop()
