"""The client library API services use to cast events to Keramos workers.

::

    client = KeramosClient(make_conf(["--config-file", "/etc/keramos/keramos.conf"]))
    request_id = client.create_amphora("amp-1", image_id="amphora-x64")
    outcome = client.wait(request_id)          # raises FlowFailed if the flow failed
"""

from __future__ import annotations

import time
from typing import Any

import kombu.exceptions
import oslo_messaging
from oslo_config import cfg

from keramos.framework import messaging, tracing
from keramos.framework.envelope import new_request_id
from keramos.framework.errors import BrokerUnreachable, FlowFailed, Timeout
from keramos.framework.records import TaskState
from keramos.framework.steps import StepCallback, StepTracker

#: The RPC version that serves ``get_progress``.
PROGRESS_RPC_VERSION = "1.1"

#: What a worker older than ``get_progress`` answers when asked for it.
_NOT_SERVED = (oslo_messaging.RemoteError, oslo_messaging.UnsupportedVersion, oslo_messaging.NoSuchMethod)


class KeramosClient:
    """Casts events to the worker topic and asks workers for the status of a request.

    Casts go to ``[worker] topic``; calls (:meth:`status`, :meth:`ping`) to its control topic
    (:func:`~keramos.framework.messaging.control_topic`), which every worker serves.

    ``transport`` defaults to one built from the configuration; pass the worker's own transport
    to talk to an in-process worker on ``fake://``.

    ``broker_timeout``: seconds the first cast or call waits for RabbitMQ to accept a
    connection before raising :class:`~keramos.framework.errors.BrokerUnreachable`; casts and
    calls then fail at once when the broker is lost instead of retrying. ``None`` (the default,
    for long-running services) leaves oslo.messaging to retry for as long as it takes.
    """

    def __init__(
        self,
        conf: cfg.ConfigOpts,
        *,
        transport: oslo_messaging.Transport | None = None,
        broker_timeout: float | None = None,
    ) -> None:
        self.conf = conf
        self.broker_timeout = broker_timeout
        self._broker_answered = False
        self._own_transport = transport is None
        self.transport = transport or messaging.rpc_transport(conf)
        self._client = oslo_messaging.get_rpc_client(
            self.transport, messaging.worker_target(conf), version_cap=messaging.RPC_API_VERSION
        )
        self._control = oslo_messaging.get_rpc_client(
            self.transport, messaging.control_target(conf), version_cap=messaging.RPC_API_VERSION
        )

    def close(self) -> None:
        """Release the transport if this client built it."""
        if self._own_transport:
            self.transport.cleanup()

    def __enter__(self) -> KeramosClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _bounded(self, client: Any, timeout: float | None) -> Any:
        """``client`` prepared to give up on an unreachable broker, when ``broker_timeout`` is set.

        Checks the broker once per client (oslo.messaging's first connection would retry
        forever), then prepares no retries: a lost broker fails the next cast or call at once.
        """
        if self.broker_timeout is None:
            return client.prepare(timeout=timeout) if timeout else client
        if not self._broker_answered:
            messaging.wait_for_broker(self.conf, min(self.broker_timeout, timeout or self.broker_timeout))
            self._broker_answered = True
        return client.prepare(timeout=timeout, retry=0) if timeout else client.prepare(retry=0)

    def _sent(self, send: Any) -> Any:
        """Run ``send``, turning a connection lost to the broker into :class:`BrokerUnreachable`."""
        try:
            return send()
        except (kombu.exceptions.OperationalError, oslo_messaging.MessageDeliveryFailure) as error:
            raise BrokerUnreachable(f"lost the message broker: {type(error).__name__}: {error}") from error

    def cast(
        self,
        event: str,
        payload: dict[str, Any],
        *,
        request_id: str | None = None,
        version: str = "1.0",
    ) -> str:
        """Cast ``event`` with ``payload`` and return the request id it carries.

        The worker validates the payload; a rejected cast shows as a ``failure`` status. With
        OpenTelemetry set up in this process the cast is a span (``cast <event>``), whose trace
        context the message carries to the flow's spans.
        """
        request_id = request_id or new_request_id()
        envelope = {"event": event, "version": version, "request_id": request_id, "payload": payload}
        client = self._bounded(self._client, None)
        attributes = {"keramos.flow": event, "keramos.request_id": request_id}
        with tracing.outgoing(f"cast {event}", kind="producer", attributes=attributes) as out:
            context = {"request_id": request_id, **out.headers}
            self._sent(lambda: client.cast(context, "handle_event", envelope=envelope))
        return request_id

    def status(self, request_id: str, *, timeout: float | None = None) -> dict[str, Any] | None:
        """Ask a worker for the task record of ``request_id`` (``None`` if none is known)."""
        started = time.monotonic()
        client = self._bounded(self._control, timeout)
        if timeout and self.broker_timeout is not None:
            client = client.prepare(timeout=max(0.1, timeout - (time.monotonic() - started)))
        return self._sent(
            lambda: client.call({"request_id": request_id}, "get_status", request_id=request_id)
        )

    def progress(self, request_id: str, *, timeout: float | None = None) -> dict[str, Any] | None:
        """The task record of ``request_id`` with the ``steps`` of its run so far (see
        :mod:`keramos.framework.steps`), or ``None`` if unknown. A worker older than this call
        answers with :meth:`status` instead (a record without steps while the flow runs)."""
        client = self._bounded(self._control, timeout).prepare(version=PROGRESS_RPC_VERSION)
        try:
            return self._sent(
                lambda: client.call({"request_id": request_id}, "get_progress", request_id=request_id)
            )
        except _NOT_SERVED:
            return self.status(request_id, timeout=timeout)

    def ping(self, *, timeout: float = 5.0) -> dict[str, Any]:
        """Ask any worker on the topic what it serves; raises MessagingTimeout if none answers."""
        client = self._bounded(self._control, timeout)
        return self._sent(lambda: client.call({}, "ping"))

    def wait(
        self,
        request_id: str,
        *,
        timeout: float = 300.0,
        interval: float = 0.02,
        on_step: StepCallback | None = None,
    ) -> dict[str, Any]:
        """Wait until the request's flow ends and return its task record.

        ``on_step(task_name, event)`` is called as tasks start, end and revert (``started``,
        ``done``, ``failed``, ``reverting``, ``reverted``, ``revert failed``), in order, each
        once, including those of the last moments of the flow.

        Raises :class:`FlowFailed` (with the flow's error) if it failed and
        :class:`~keramos.framework.errors.Timeout` if it has not ended after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        tracker = StepTracker(on_step) if on_step is not None else None
        look = self.status if tracker is None else self.progress
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout(f"{request_id} has not ended after {timeout:g}s")
            try:
                record = look(request_id, timeout=max(1.0, min(remaining, 30.0)))
            except oslo_messaging.MessagingTimeout:
                record = None
            if record is not None and tracker is not None:
                tracker.update(record.get("steps"))
            if record is not None and record["state"] == TaskState.FAILURE:
                raise FlowFailed(
                    record["event"],
                    request_id,
                    record.get("error_type") or "Error",
                    record.get("message") or "",
                )
            if record is not None and record["state"] == TaskState.SUCCESS:
                return record
            time.sleep(min(interval, max(remaining, 0)))
            interval = min(interval * 1.5, 0.5)

    def call_and_wait(self, event: str, payload: dict[str, Any], **wait: Any) -> dict[str, Any]:
        """Cast and wait for the outcome; returns the flow's result."""
        return self.wait(self.cast(event, payload), **wait)["result"]

    def create_amphora(
        self,
        amphora_id: str,
        image_id: str,
        *,
        network_id: str | None = None,
        request_id: str | None = None,
    ) -> str:
        """Cast ``create_amphora``; returns the request id."""
        payload = {"amphora_id": amphora_id, "image_id": image_id, "network_id": network_id}
        return self.cast("create_amphora", payload, request_id=request_id)

    def delete_amphora(self, amphora_id: str, *, request_id: str | None = None) -> str:
        """Cast ``delete_amphora``; returns the request id."""
        return self.cast("delete_amphora", {"amphora_id": amphora_id}, request_id=request_id)
