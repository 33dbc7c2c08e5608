"""In-process testing kit for flow and plugin authors: a real worker, no broker, no network.

::

    from keramos.framework.testing import InProcessWorker

    def test_my_flow():
        with InProcessWorker(flows=[MyFlow], compute=MyComputeDriver) as worker:
            result = worker.cast_and_wait("my_flow", {"name": "x"})
            assert result["thing"] == ...

The worker is the one ``keramos-worker`` runs (same runner, same RPC endpoint) on the
in-process ``fake://`` transport, with a SQLite state store and flow persistence in a temporary
directory and the noop driver of every kind not given. With the pytest plugin (installed with
Keramos) the ``keramos_worker`` fixture builds and stops them for you.

``worker.events`` records the events a worker would publish as notifications
(``worker.events.types(request_id)``); ``observers=[...]`` adds
:class:`~keramos.framework.observers.RunObserver` s of your own.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from oslo_config import cfg

from keramos.framework.client import KeramosClient
from keramos.framework.config import make_conf
from keramos.framework.contracts import Driver, FlowFactory
from keramos.framework.envelope import Job, new_request_id
from keramos.framework.errors import (
    FlowFailed,
    IncompatibleVersion,
    InvalidEvent,
    PayloadError,
    UnknownEvent,
)
from keramos.framework.observers import EventObserver, ProgressCallback, ProgressObserver, RunObserver
from keramos.framework.service import Worker

#: The errors a worker refuses a cast with before its flow runs, by name.
_REJECTIONS: dict[str, type[InvalidEvent]] = {
    error.__name__: error for error in (InvalidEvent, UnknownEvent, IncompatibleVersion, PayloadError)
}

#: A driver given to the kit: an instance, or a callable building one from the configuration.
DriverSpec = Driver | Callable[[cfg.ConfigOpts], Driver]


class RecordingObserver(EventObserver):
    """Keeps every event a worker would publish, for tests to inspect (``worker.events``).

    ``events`` holds ``(event_type, payload)`` pairs in the order they were emitted.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def emit(self, event_type: str, payload: dict[str, Any], *, error: bool = False) -> None:
        """Record the event."""
        with self._lock:
            self.events.append((event_type, payload))

    def types(self, request_id: str | None = None) -> list[str]:
        """Event types emitted, in order, optionally for one request only."""
        with self._lock:
            return [
                event_type
                for event_type, payload in self.events
                if request_id is None or payload.get("request_id") == request_id
            ]


class _FailureCatcher(RunObserver):
    """Keeps each failed flow's :class:`FlowFailed` (with its ``cause``) until a test waits for it."""

    def __init__(self) -> None:
        self._failures: dict[str, FlowFailed] = {}
        self._failed = threading.Condition()

    def failed(self, job: Job, failure: FlowFailed, duration: float) -> None:
        with self._failed:
            self._failures[failure.request_id] = failure
            self._failed.notify_all()

    def take(self, request_id: str, timeout: float) -> FlowFailed | None:
        """The failure of ``request_id``, waiting up to ``timeout`` seconds for it to arrive."""
        with self._failed:
            self._failed.wait_for(lambda: request_id in self._failures, timeout=timeout)
            return self._failures.pop(request_id, None)


class InProcessWorker:
    """A complete worker in this process, with a client wired to it.

    ``flows``: extra :class:`FlowFactory` classes to serve (installed ones are served too).
    ``conf_overrides``: group -> option -> value, on top of the kit's defaults.
    ``state_path``: where SQLite files go (a temporary directory, removed at exit, if ``None``).
    ``drivers``: kind -> driver instance or factory; every other kind gets its noop driver.
    ``observers``: watch every run, after the kit's own (``events`` and the one that keeps each
    failure's original error for :meth:`wait`).
    ``progress``: ``callback(task_name, state, details)`` on every task state change of every
    run (a :class:`~keramos.framework.observers.ProgressObserver` added to ``observers``).
    """

    def __init__(
        self,
        *,
        flows: Iterable[type[FlowFactory]] = (),
        conf_overrides: Mapping[str, Mapping[str, Any]] | None = None,
        state_path: str | Path | None = None,
        progress: ProgressCallback | None = None,
        observers: Sequence[RunObserver] = (),
        **drivers: DriverSpec,
    ) -> None:
        self._flows = tuple(flows)
        self._overrides = conf_overrides or {}
        self._state_path = Path(state_path) if state_path else None
        self._own_state_path = state_path is None
        self._driver_specs = drivers
        self._failures = _FailureCatcher()
        self.events = RecordingObserver()
        self._observers: list[RunObserver] = [self.events, self._failures]
        if progress is not None:
            self._observers.append(ProgressObserver(progress))
        self._observers += observers
        self.conf: cfg.ConfigOpts | None = None
        self.worker: Worker | None = None
        self.client: KeramosClient | None = None

    def _original_error(self, failure: FlowFailed) -> BaseException:
        # The task record turns ``failure`` a moment before the worker hands the exception over;
        # a rejected cast never ran, so it has no exception to wait for: its error is rebuilt
        # from the record.
        if failure.error_type in _REJECTIONS:
            return _REJECTIONS[failure.error_type](
                failure.error_message, request_id=failure.request_id, event=failure.flow
            )
        original = self._failures.take(failure.request_id, timeout=10)
        return original.cause if original is not None and original.cause else failure

    def start(self) -> InProcessWorker:
        """Build and start the worker and its client."""
        if self._state_path is None:
            self._state_path = Path(tempfile.mkdtemp(prefix="keramos-test-"))
        self._state_path.mkdir(parents=True, exist_ok=True)
        overrides: dict[str, dict[str, Any]] = {
            "DEFAULT": {
                "transport_url": "fake://",
                "state_path": str(self._state_path),
                "host": f"keramos-test-{uuid.uuid4().hex[:8]}",
            },
            "drivers": {"state_store": "sqlalchemy"},
        }
        for group, values in self._overrides.items():
            overrides.setdefault(group, {}).update(values)
        self.conf = make_conf(config_files=[], overrides=overrides)
        built = {
            kind: spec if isinstance(spec, Driver) else spec(self.conf)
            for kind, spec in self._driver_specs.items()
        }
        self.worker = Worker(
            self.conf,
            drivers=built,
            extra_flows=self._flows,
            observers=self._observers,
        )
        # The noop image store's images carry no signature: the kit boots them unverified, unless
        # the test says otherwise. Set once the flows registered the option (none is run yet).
        amphora = self._overrides.get("amphora", {})
        if "require_signed_images" not in amphora and "require_signed_images" in self.conf.get(
            "amphora", ()
        ):
            self.conf.set_override("require_signed_images", False, group="amphora")
        self.worker.start(resume=False)
        self.client = KeramosClient(self.conf, transport=self.worker.transport)
        return self

    def stop(self) -> None:
        """Stop the worker, release its transport and remove a temporary state directory."""
        if self.worker is not None:
            self.worker.stop(timeout=30)
            self.worker = None
        if self._own_state_path and self._state_path is not None:
            shutil.rmtree(self._state_path, ignore_errors=True)

    def __enter__(self) -> InProcessWorker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def drivers(self):
        """The worker's :class:`~keramos.framework.contracts.Drivers`."""
        return self._require_worker().drivers

    @property
    def state_store(self):
        """The worker's state store."""
        return self.drivers.state_store

    def _require_worker(self) -> Worker:
        if self.worker is None:
            raise RuntimeError("the worker is not started: use 'with InProcessWorker(...)'")
        return self.worker

    def run(
        self, event: str, payload: dict[str, Any], *, on_progress: ProgressCallback | None = None
    ) -> dict[str, Any]:
        """Run ``event``'s flow here, through the runner only (no transport); return its result.

        ``on_progress(task_name, state, details)`` is called on this run's task state changes
        (besides the worker's ``progress``). Raises the flow's own error if it failed (after its
        revert).
        """
        envelope = {"event": event, "request_id": new_request_id(), "payload": payload}
        run_observers = [ProgressObserver(on_progress)] if on_progress is not None else []
        try:
            return self._require_worker().runner.submit(envelope, observers=run_observers)
        except FlowFailed as failure:
            self._failures.take(failure.request_id, timeout=0)
            raise failure.cause or failure from None

    def cast(self, event: str, payload: dict[str, Any], **kwargs: Any) -> str:
        """Cast through the fake transport; returns the request id."""
        self._require_worker()
        return self.client.cast(event, payload, **kwargs)

    def wait(self, request_id: str, *, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for a cast's outcome and return its result; re-raise the flow's error."""
        try:
            return self.client.wait(request_id, timeout=timeout)["result"]
        except FlowFailed as failure:
            raise self._original_error(failure) from None

    def cast_and_wait(
        self, event: str, payload: dict[str, Any], *, timeout: float = 30.0, **kwargs: Any
    ) -> dict[str, Any]:
        """Cast through the fake transport and wait; returns the result or raises its error."""
        return self.wait(self.cast(event, payload, **kwargs), timeout=timeout)
