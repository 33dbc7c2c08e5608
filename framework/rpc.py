"""The oslo.messaging edge: transports, the worker's RPC endpoint and the notification sink.

This is the only core module (with :mod:`.client` and :mod:`.service`) that imports
oslo.messaging; the runner it drives does not.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import oslo_messaging
from oslo_config import cfg
from oslo_log import log as logging

from keramos.framework.errors import FlowFailed, InvalidEvent
from keramos.framework.records import TaskRecord
from keramos.framework.runner import FlowRunner, jsonable

LOG = logging.getLogger(__name__)

#: Version of the RPC interface (the envelope and method names), not of the events it carries.
RPC_API_VERSION = "1.0"


def rpc_transport(conf: cfg.ConfigOpts) -> oslo_messaging.Transport:
    """The RPC transport of ``[DEFAULT] transport_url``."""
    return oslo_messaging.get_rpc_transport(conf)


def notification_transport(conf: cfg.ConfigOpts) -> oslo_messaging.Transport:
    """The notification transport (``[oslo_messaging_notifications] transport_url`` or RPC's)."""
    return oslo_messaging.get_notification_transport(conf)


def worker_target(conf: cfg.ConfigOpts, *, server: str | None = None) -> oslo_messaging.Target:
    """The target casts are sent to and the worker consumes from."""
    return oslo_messaging.Target(
        topic=conf.worker.topic, server=server, version=RPC_API_VERSION
    )


class NotifierSink:
    """Reports flow events as oslo.messaging notifications (``keramos.<flow>.<phase>``)."""

    def __init__(self, conf: cfg.ConfigOpts, transport: oslo_messaging.Transport) -> None:
        self._notifier = oslo_messaging.Notifier(
            transport, publisher_id=f"keramos.worker.{conf.host}"
        )

    def emit(self, event_type: str, payload: dict[str, Any], *, error: bool = False) -> None:
        context = {"request_id": payload.get("request_id")}
        try:
            if error:
                self._notifier.error(context, event_type, payload)
            else:
                self._notifier.info(context, event_type, payload)
        except Exception:
            LOG.exception("could not send notification %s", event_type)


class WorkerEndpoint:
    """What the worker serves over RPC: ``handle_event`` (cast) and ``get_status`` (call).

    ``on_failure`` is told of every flow that failed (the in-process testing kit uses it to
    re-raise the flow's own error in the test).
    """

    target = oslo_messaging.Target(version=RPC_API_VERSION)

    def __init__(
        self, runner: FlowRunner, *, on_failure: Callable[[FlowFailed], None] | None = None
    ) -> None:
        self.runner = runner
        self.on_failure = on_failure
        self._active = 0
        self._active_lock = threading.Lock()

    @property
    def active(self) -> int:
        """How many flows this endpoint is running right now."""
        return self._active

    def handle_event(self, ctxt: dict[str, Any], envelope: Any) -> None:
        """Run the flow of one cast; every outcome is recorded, none escapes to the transport."""
        with self._active_lock:
            self._active += 1
        try:
            self.runner.submit(envelope)
        except InvalidEvent:
            pass
        except FlowFailed as failure:
            if self.on_failure is not None:
                self.on_failure(failure)
        except Exception:
            request_id = envelope.get("request_id") if isinstance(envelope, dict) else None
            LOG.exception("unexpected error handling cast %s", request_id)
        finally:
            with self._active_lock:
                self._active -= 1

    def get_status(self, ctxt: dict[str, Any], request_id: str) -> dict[str, Any] | None:
        """The task record of ``request_id`` as a dict, or ``None`` if unknown."""
        record = self.runner.drivers.state_store.get(TaskRecord, request_id)
        return None if record is None else jsonable(record.to_dict())

    def ping(self, ctxt: dict[str, Any]) -> dict[str, Any]:
        """Liveness and what this worker serves."""
        return {"events": sorted(self.runner.flows), "active": self._active}


def rpc_server(
    conf: cfg.ConfigOpts, transport: oslo_messaging.Transport, endpoint: WorkerEndpoint
) -> oslo_messaging.MessageHandlingServer:
    """An RPC server on the worker topic running casts on ``[worker] executor_threads``."""
    conf.set_override("executor_thread_pool_size", conf.worker.executor_threads)
    return oslo_messaging.get_rpc_server(
        transport,
        worker_target(conf, server=conf.host),
        [endpoint],
        executor="threading",
        access_policy=oslo_messaging.DefaultRPCAccessPolicy,
    )
