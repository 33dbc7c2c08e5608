"""The oslo.messaging edge of the worker: its RPC endpoint and server, and the notification observer.

This is the only core module (with :mod:`.client` and :mod:`.service`) that imports
oslo.messaging; the runner it drives does not.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import oslo_messaging
from oslo_config import cfg
from oslo_log import log as logging

from keramos.framework import tracing
from keramos.framework.envelope import Job
from keramos.framework.errors import FlowFailed
from keramos.framework.messaging import RPC_API_VERSION, control_target, worker_target
from keramos.framework.observers import EventObserver
from keramos.framework.records import TaskRecord
from keramos.framework.runner import Accepted, FlowRunner, jsonable

if TYPE_CHECKING:
    from keramos.framework.jobboard import JobBoardMode

LOG = logging.getLogger(__name__)

class NotificationObserver(EventObserver):
    """Publishes the events of runs as oslo.messaging notifications (``keramos.<flow>.<phase>``).

    The event types and payloads are :class:`~keramos.framework.observers.EventObserver`'s;
    ``.error`` events go out at the ``error`` priority, the others at ``info``.
    """

    def __init__(self, conf: cfg.ConfigOpts, transport: oslo_messaging.Transport) -> None:
        self.transport = transport
        self._notifier = oslo_messaging.Notifier(
            transport, publisher_id=f"keramos.worker.{conf.host}"
        )

    def close(self) -> None:
        """Release the notification transport."""
        self.transport.cleanup()

    def emit(self, event_type: str, payload: dict[str, Any], *, error: bool = False) -> None:
        """Send one notification; a transport error is logged, not raised."""
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

    ``handle_event`` only accepts a cast: it validates it, records it ``pending`` with its
    durable flow detail, and queues it for the flow threads (``[worker] executor_threads``), so
    that taking casts off the queue never waits behind running flows. At most
    ``[worker] max_queued_flows`` accepted flows wait; past that, accepting waits.
    Every outcome reaches the runner's observers.
    """

    target = oslo_messaging.Target(version=RPC_API_VERSION)

    def __init__(self, runner: FlowRunner, *, jobboard: JobBoardMode | None = None) -> None:
        self.runner = runner
        #: In jobboard mode, where accepted casts go instead of this process's flow threads.
        self.jobboard = jobboard
        conf = runner.conf.worker
        self._flows = ThreadPoolExecutor(conf.executor_threads, thread_name_prefix="keramos-flow")
        self._slots = threading.BoundedSemaphore(conf.executor_threads + conf.max_queued_flows)
        self._active = 0
        self._active_lock = threading.Lock()

    @property
    def active(self) -> int:
        """How many accepted flows are running or waiting for a flow thread."""
        return self._active

    def admit(self, envelope: Any, context: Any = None) -> Accepted | None:
        """Take one cast in durably; return what to :meth:`start` in this process, if anything.

        Without a jobboard that is what :meth:`FlowRunner.take` returns. With one, the accepted
        cast is posted as a job for any worker's conductor and nothing is started here; a cast
        delivered again after it was taken but never posted is posted now. An exception means
        the cast is not safe yet (not recorded, or not posted): do not acknowledge it.

        ``context`` is the RPC message's context: the trace context it carries stays with the
        accepted cast.
        """
        accepted = self.runner.take(envelope, trace_context=tracing.carrier_of(context))
        if self.jobboard is None:
            return accepted
        if accepted is not None:
            self.jobboard.post(accepted)
        elif isinstance(envelope, dict) and isinstance(envelope.get("request_id"), str):
            self.jobboard.post_missing(envelope["request_id"])
        return None

    def handle_event(self, ctxt: dict[str, Any], envelope: Any) -> None:
        """Accept one cast and queue its flow; every outcome is recorded, none is raised."""
        try:
            accepted = self.admit(envelope, ctxt)
        except Exception:
            LOG.exception("could not take a cast in")
            return
        if accepted is not None:
            self.start(accepted)

    def start(self, accepted: Accepted) -> None:
        """Queue an accepted cast's flow for the flow threads; waits while the queue is full.

        An intake calls this once the cast is taken (and acknowledged). After :meth:`drain` the
        flow is not started: it stays in the persistence backend, resumed by the next start.
        """
        self._slots.acquire()
        with self._active_lock:
            self._active += 1
        try:
            self._flows.submit(self._run, accepted.job, accepted.book, accepted.flow_detail)
        except RuntimeError:
            with self._active_lock:
                self._active -= 1
            self._slots.release()
            LOG.warning(
                "worker stopping: flow %s (%s) left to be resumed by the next start",
                accepted.job.event,
                accepted.job.request_id,
            )

    def _run(self, job: Job, book: Any, flow_detail: Any) -> None:
        try:
            self.runner.run(job, book, flow_detail)
        except FlowFailed:
            pass  # recorded, logged and reported to the observers by the runner
        except Exception:
            LOG.exception("unexpected error running %s (%s)", job.event, job.request_id)
        finally:
            with self._active_lock:
                self._active -= 1
            self._slots.release()

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for accepted flows to end; ``True`` if they all did.

        Flows that have not ended are left in the persistence backend, to be resumed.
        """
        deadline = time.monotonic() + timeout
        while self._active and time.monotonic() < deadline:
            time.sleep(0.05)
        drained = self._active == 0
        self._flows.shutdown(wait=drained)
        return drained

    def get_status(self, ctxt: dict[str, Any], request_id: str) -> dict[str, Any] | None:
        """The task record of ``request_id`` as a dict, or ``None`` if unknown."""
        record = self.runner.drivers.state_store.get(TaskRecord, request_id)
        return None if record is None else jsonable(record.to_dict())

    def get_progress(self, ctxt: dict[str, Any], request_id: str) -> dict[str, Any] | None:
        """The task record of ``request_id`` with the steps of its run so far (RPC 1.1), or
        ``None`` if unknown (see :meth:`FlowRunner.progress`)."""
        return self.runner.progress(request_id)

    def ping(self, ctxt: dict[str, Any]) -> dict[str, Any]:
        """Liveness and what this worker serves."""
        return {"events": sorted(self.runner.flows), "active": self._active}


def rpc_server(
    conf: cfg.ConfigOpts, transport: oslo_messaging.Transport, endpoint: WorkerEndpoint
) -> oslo_messaging.MessageHandlingServer:
    """An RPC server on the worker topic accepting casts on ``[worker] accept_threads``.

    The ``rpc`` intake: oslo.messaging acknowledges a message before ``handle_event`` runs, so
    a worker killed in between loses that cast. Used on transports other than RabbitMQ
    (``fake://``), where :mod:`keramos.framework.intake` does not apply.
    """
    conf.set_override("executor_thread_pool_size", conf.worker.accept_threads)
    return oslo_messaging.get_rpc_server(
        transport,
        worker_target(conf, server=conf.host),
        [endpoint],
        access_policy=oslo_messaging.DefaultRPCAccessPolicy,
    )


def control_server(
    conf: cfg.ConfigOpts, transport: oslo_messaging.Transport, endpoint: WorkerEndpoint
) -> oslo_messaging.MessageHandlingServer:
    """An RPC server on the control topic: the calls (``get_status``, ``ping``) clients make.

    Every worker runs one, whatever its intake; casts never go there.
    """
    conf.set_override("executor_thread_pool_size", conf.worker.accept_threads)
    return oslo_messaging.get_rpc_server(
        transport,
        control_target(conf, server=conf.host),
        [endpoint],
        access_policy=oslo_messaging.DefaultRPCAccessPolicy,
    )
