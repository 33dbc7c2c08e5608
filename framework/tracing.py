"""OpenTelemetry traces of casts: cast -> flow -> each task -> each agent request, one tree.

The trace context crosses the queue in the RPC message's context (:func:`outgoing` injects the
W3C ``traceparent``/``tracestate`` into what the client casts, :func:`carrier_of` takes them out
on the worker), waits with the accepted cast in its flow detail (so a resumed flow, or a job a
conductor of another worker claims, joins the same trace), and goes to the amphora agent in the
``traceparent`` header of each request of the REST driver.

The flow and task spans come from :class:`TracingObserver`, a run observer: flows and tasks hold
no tracing code. The observer makes each task's span current in the thread that schedules the
task, and the runner's parallel engine runs tasks in that context, so a driver's outgoing request
becomes a child of its task's span.

OpenTelemetry is optional (``pip install 'keramos[tracing]'``): without it every function here
does nothing, and only ``[tracing] enabled = true`` is an error (:func:`setup`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from oslo_config import cfg
from oslo_log import log as logging

from keramos.framework.errors import ConfigError
from keramos.framework.observers import RunObserver

if TYPE_CHECKING:
    from keramos.framework.envelope import Job
    from keramos.framework.errors import FlowFailed

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # the tracing extra is not installed: tracing does nothing
    trace = None

LOG = logging.getLogger(__name__)

#: The W3C trace context keys carried in an RPC message's context and a flow detail.
TRACE_KEYS = ("traceparent", "tracestate")
#: The instrumentation scope of Keramos's spans.
TRACER_NAME = "keramos"

# Taskflow's atom states, spelled out: the client imports this module, and an API service
# importing the client loads no taskflow.
_RUNNING, _REVERTING = "RUNNING", "REVERTING"
_FAILURES = ("FAILURE", "REVERT_FAILURE")
_ENDS = ("SUCCESS", "REVERTED", *_FAILURES)


def available() -> bool:
    """Whether the OpenTelemetry API is installed."""
    return trace is not None


def carrier_of(context: Any) -> dict[str, str]:
    """The trace context keys of an RPC message's context (``{}`` when it carries none)."""
    if not isinstance(context, Mapping):
        return {}
    return {key: context[key] for key in TRACE_KEYS if isinstance(context.get(key), str)}


class Outgoing:
    """What :func:`outgoing` yields: the ``headers`` to send, and :meth:`attribute` for the span."""

    def __init__(self, span: Any) -> None:
        self.span = span
        self.headers: dict[str, str] = {}

    def attribute(self, key: str, value: Any) -> None:
        """Set an attribute of the span (nothing without OpenTelemetry)."""
        if self.span is not None:
            self.span.set_attribute(key, value)


@contextlib.contextmanager
def outgoing(
    name: str, *, kind: str = "client", attributes: Mapping[str, Any] | None = None
) -> Iterator[Outgoing]:
    """A span for one message or request leaving this process, with its trace headers.

    ``kind`` is ``client`` (a request) or ``producer`` (a cast). The span is a child of the
    current one (or a new trace); an exception leaving the block marks it failed. Without
    OpenTelemetry, or when no tracer provider is set up, the headers are empty.
    """
    if trace is None:
        yield Outgoing(None)
        return
    span_kind = SpanKind.PRODUCER if kind == "producer" else SpanKind.CLIENT
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(name, kind=span_kind, attributes=dict(attributes or {})) as span:
        out = Outgoing(span)
        propagate.inject(out.headers)
        yield out


def _failed(span: Any, message: str) -> None:
    span.set_status(Status(StatusCode.ERROR, message))


class _RunSpans:
    """The spans of one run, its context, and the context token to restore when it ends."""

    def __init__(self, span: Any, token: Any) -> None:
        self.span = span
        self.context = trace.set_span_in_context(span)
        self.token = token
        self.tasks: dict[str, Any] = {}


class TracingObserver(RunObserver):
    """Makes a span of each run (``flow <event>``) and of each task's run and revert.

    The flow's span is a child of the caster's span when the cast carried a trace context
    (``job.trace_context``), else the root of a new trace. ``tracer_provider`` defaults to the
    global one (set up by :func:`setup`).
    """

    def __init__(self, tracer_provider: Any = None) -> None:
        if trace is None:
            raise ConfigError(_MISSING)
        self.tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer(TRACER_NAME)
        self._runs: dict[str, _RunSpans] = {}
        self._lock = threading.Lock()

    def started(self, job: Job) -> None:
        """Open the flow's span and make it current in the flow's thread."""
        span = self.tracer.start_span(
            f"flow {job.event}",
            context=propagate.extract(dict(job.trace_context)),
            kind=SpanKind.CONSUMER,
            attributes={
                "keramos.flow": job.event,
                "keramos.request_id": job.request_id,
                "keramos.resource_id": job.resource_id or "",
            },
        )
        run = _RunSpans(span, None)
        run.token = otel_context.attach(run.context)
        with self._lock:
            self._runs[job.request_id] = run

    def task_state_changed(
        self, job: Job, task_name: str, state: str, details: Mapping[str, Any]
    ) -> None:
        """Open a task's span when it runs or reverts; close it when that ends."""
        with self._lock:
            run = self._runs.get(job.request_id)
        if run is None:
            return
        if state in (_RUNNING, _REVERTING):
            verb = "task" if state == _RUNNING else "revert"
            span = self.tracer.start_span(
                f"{verb} {task_name}", context=run.context, attributes={"keramos.task": task_name}
            )
            run.tasks[task_name] = span
            # The engine runs the task next (its executor carries this context to the thread
            # that runs it); the flow's token resets the context when the run ends.
            otel_context.attach(trace.set_span_in_context(span))
            return
        if state not in _ENDS:
            return
        span = run.tasks.pop(task_name, None)
        if span is None:
            return
        if state in _FAILURES:
            failure = details.get("result")
            _failed(span, getattr(failure, "exception_str", None) or state)
        span.end()

    def succeeded(self, job: Job, result: dict[str, Any], duration: float) -> None:
        """Close the flow's span."""
        self._end(job, None)

    def failed(self, job: Job, failure: FlowFailed, duration: float) -> None:
        """Close the flow's span, marked failed with the flow's error."""
        self._end(job, f"{failure.error_type}: {failure.error_message}")

    def _end(self, job: Job, error: str | None) -> None:
        with self._lock:
            run = self._runs.pop(job.request_id, None)
        if run is None:
            return
        for span in run.tasks.values():
            span.end()
        if error is not None:
            _failed(run.span, error)
        run.span.end()
        otel_context.detach(run.token)


_MISSING = (
    "[tracing] enabled needs OpenTelemetry, which is not installed: pip install 'keramos[tracing]'"
)
_configured: Any = None
_configured_lock = threading.Lock()


def _sdk() -> tuple[Any, Any, Any, Any]:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise ConfigError(_MISSING) from None
    return OTLPSpanExporter, Resource, TracerProvider, BatchSpanProcessor


def check(conf: cfg.ConfigOpts) -> None:
    """:class:`ConfigError` when ``[tracing] enabled`` and OpenTelemetry is not installed
    (a worker checks before forking; nothing is set up)."""
    if conf.tracing.enabled:
        _sdk()


def setup(conf: cfg.ConfigOpts, program: str = "keramos-worker") -> Any:
    """Export this process's spans over OTLP as ``[tracing]`` says; the tracer provider, or
    ``None`` when tracing is off.

    Set up once per process (the global tracer provider can be set once); call it in each
    worker process, after the fork. ``program`` names the service when ``[tracing]
    service_name`` is empty. :class:`ConfigError` when tracing is on and OpenTelemetry's
    SDK or OTLP exporter is not installed.
    """
    global _configured
    if not conf.tracing.enabled:
        return None
    exporter, resource, tracer_provider, batch = _sdk()
    with _configured_lock:
        if _configured is None:
            provider = tracer_provider(
                resource=resource.create({"service.name": conf.tracing.service_name or program})
            )
            endpoint = conf.tracing.otlp_endpoint or None
            provider.add_span_processor(batch(exporter(endpoint=endpoint)))
            trace.set_tracer_provider(provider)
            _configured = provider
            LOG.info("exporting traces over OTLP to %s", endpoint or "the exporter's default")
        return _configured


def flush(provider: Any) -> None:
    """Export the spans ``provider`` still holds (a worker process stops)."""
    if provider is not None:
        provider.force_flush()
