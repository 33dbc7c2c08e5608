"""Metrics and traces for tests: scraping /metrics as Prometheus does, this process's spans
kept in memory, and span trees to check."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Status
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

_exporter: InMemorySpanExporter | None = None
_lock = threading.Lock()


def memory_exporter() -> InMemorySpanExporter:
    """The exporter of the global tracer provider, set up on first use (it can be set once per
    process), emptied: what the client and the drivers of this process trace lands there."""
    global _exporter
    with _lock:
        if _exporter is None:
            _exporter = InMemorySpanExporter()
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(_exporter))
            trace.set_tracer_provider(provider)
        _exporter.clear()
        return _exporter


@dataclass(frozen=True)
class Span:
    """What a span tree check needs of a span, from the SDK or decoded from OTLP."""

    name: str
    trace_id: int
    span_id: int
    parent_id: int | None
    failed: bool

    @classmethod
    def of(cls, span) -> Span:
        """The :class:`Span` of an SDK ``ReadableSpan``."""
        return cls(
            span.name,
            span.context.trace_id,
            span.context.span_id,
            span.parent.span_id if span.parent is not None else None,
            span.status.status_code is trace.StatusCode.ERROR,
        )


def tree(spans: Iterable[Span], trace_id: int) -> dict[str, list[str]]:
    """The spans of one trace as ``{parent name: [child names, sorted]}`` (root under ``""``).

    Fails when a span's parent is not among them: the trace is not one connected tree.
    """
    members = [span for span in spans if span.trace_id == trace_id]
    by_id = {span.span_id: span for span in members}
    children: dict[str, list[str]] = {}
    for span in members:
        if span.parent_id is None:
            parent = ""
        else:
            assert span.parent_id in by_id, f"{span.name}'s parent is not in the trace"
            parent = by_id[span.parent_id].name
        children.setdefault(parent, []).append(span.name)
    return {parent: sorted(names) for parent, names in children.items()}


def named(spans: Sequence[Span], name: str) -> Span:
    """The one span called ``name``."""
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, f"{len(found)} spans named {name}: {[s.name for s in spans]}"
    return found[0]


def scrape(address: tuple[str, int]) -> dict[str, dict[tuple, float]]:
    """``{sample name: {sorted labels: value}}`` of the /metrics page, as Prometheus reads it."""
    host, port = address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


class OtlpCollector:
    """The receiving end of OTLP/HTTP traces: keeps every span posted to /v1/traces."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        lock = threading.Lock()
        spans = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                request = ExportTraceServiceRequest.FromString(
                    self.rfile.read(int(self.headers["Content-Length"]))
                )
                with lock:
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            spans.extend(OtlpCollector.span(span) for span in scope.spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    @staticmethod
    def span(span) -> Span:
        return Span(
            span.name,
            int.from_bytes(span.trace_id, "big"),
            int.from_bytes(span.span_id, "big"),
            int.from_bytes(span.parent_span_id, "big") if span.parent_span_id else None,
            span.status.code == Status.STATUS_CODE_ERROR,
        )


def eventually(check, timeout: float = 30.0):
    """What ``check`` returns once it stops failing (an assertion or a missing key), polled for
    ``timeout`` seconds: spans and counters arrive a moment after the flow ends."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, KeyError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
