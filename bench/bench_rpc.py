"""Benchmark (a): casts consumed per second by one worker over RabbitMQ.

A sender process casts N events as fast as it can to a fresh topic; the consumer in this
process is either a raw oslo.messaging RPC server with a no-op endpoint, or a Keramos worker
with a one-task no-op flow, taking casts with the rpc intake (oslo.messaging acknowledges
first) or the kombu intake (acknowledges once the cast is recorded). For Keramos two rates come
from the same run: casts consumed (validated, recorded ``pending`` and, when durable, saved to
resume after a crash) and flows finished (run, recorded, notified). Each rate is N over the time
from the first to the Nth.

``python bench/bench_rpc.py [CASTS]`` (RabbitMQ on 127.0.0.1:5672, guest/guest).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
import uuid
from pathlib import Path

import kombu
import oslo_messaging
from taskflow import task
from taskflow.patterns import linear_flow

from keramos.framework import messaging, rpc
from keramos.framework.config import make_conf
from keramos.framework.contracts import FlowFactory
from keramos.framework.observers import RunObserver
from keramos.framework.service import Worker

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_table, row  # noqa: E402

RABBIT_URL = os.environ.get("KERAMOS_BENCH_RABBIT_URL", "rabbit://guest:guest@127.0.0.1:5672/")


class Noop(task.Task):
    """Does nothing."""

    def execute(self) -> None:
        """Nothing."""


class NoopFlow(FlowFactory):
    """One no-op task: what is left is Keramos's own cost per cast."""

    name = "bench_noop"

    def build(self) -> linear_flow.Flow:
        return linear_flow.Flow(self.name).add(Noop(name="noop"))


class Counter:
    """Counts finished casts; notes the time of the first and of the Nth."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.done = threading.Event()
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            self.count += 1
            if self.count == 1:
                self.first = time.perf_counter()
            if self.count == self.expected:
                self.last = time.perf_counter()
                self.done.set()

    def rate(self) -> float:
        return (self.expected - 1) / (self.last - self.first)


class FinishCounter(RunObserver):
    """Counts the casts that finished: flows that succeeded or failed, and refused casts."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    def rejected(self, request_id, event, error) -> None:
        self.counter.tick()

    def succeeded(self, job, result, duration) -> None:
        self.counter.tick()

    def failed(self, job, failure, duration) -> None:
        self.counter.tick()


class RawEndpoint:
    """The baseline: an endpoint that only counts."""

    target = oslo_messaging.Target(version=messaging.RPC_API_VERSION)

    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    def handle_event(self, ctxt, envelope) -> None:
        self.counter.tick()


def conf_for(topic: str, state: Path, **overrides):
    groups = {
        "DEFAULT": {
            "transport_url": RABBIT_URL,
            "state_path": str(state),
            "host": topic,
            "control_exchange": topic,
        },
        "worker": {"topic": topic, "resume_on_start": False},
        "oslo_messaging_notifications": {"topics": [f"{topic}-notifications"]},
        "drivers": {"flows": ["create_amphora"]},
    }
    for group, values in overrides.items():
        groups.setdefault(group, {}).update(values)
    return make_conf(config_files=[], overrides=groups)


def send(topic: str, casts: int) -> None:
    """The sender process: cast ``casts`` events with a raw oslo.messaging client."""
    conf = conf_for(topic, Path("/tmp"))
    transport = oslo_messaging.get_rpc_transport(conf)
    client = oslo_messaging.get_rpc_client(transport, messaging.worker_target(conf))
    for n in range(casts):
        request_id = f"req-{topic}-{n}"
        envelope = {"event": "bench_noop", "version": "1.0", "request_id": request_id, "payload": {}}
        client.cast({"request_id": request_id}, "handle_event", envelope=envelope)
    transport.cleanup()


def measure(label: str, topic: str, casts: int, start_consumer, stop_consumer, counter) -> None:
    start_consumer()
    sender = multiprocessing.get_context("spawn").Process(target=send, args=(topic, casts))
    sender.start()
    finished = counter.done.wait(timeout=max(120, casts / 20))
    sender.join()
    stop_consumer()
    delete_queues(topic)
    if not finished:
        raise RuntimeError(f"{label}: only {counter.count} of {casts} casts finished")


def delete_queues(topic: str) -> None:
    with kombu.Connection(RABBIT_URL.replace("rabbit://", "amqp://", 1)) as connection:
        channel = connection.channel()
        for name in (topic, f"{topic}.{topic}", f"{topic}-control", f"{topic}-control.{topic}",
                     f"{topic}-notifications.info", f"{topic}-notifications.error"):
            channel.queue_delete(name)
        channel.exchange_delete(topic)


def raw_rate(casts: int, state: Path) -> float:
    topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
    conf = conf_for(topic, state)
    counter = Counter(casts)
    transport = oslo_messaging.get_rpc_transport(conf)
    server = oslo_messaging.get_rpc_server(
        transport, messaging.worker_target(conf, server=topic), [RawEndpoint(counter)],
        executor="threading",
    )

    def stop() -> None:
        server.stop()
        server.wait()
        transport.cleanup()

    measure("raw oslo.messaging, no-op endpoint", topic, casts, server.start, stop, counter)
    print(f"  raw oslo.messaging, no-op endpoint: {counter.rate():.0f} casts/s", file=sys.stderr)
    return counter.rate()


def keramos_rates(label: str, casts: int, state: Path, **overrides) -> tuple[float, float]:
    """(casts consumed per second, flows finished per second) of one worker."""
    topic = f"bench-keramos-{uuid.uuid4().hex[:8]}"
    conf = conf_for(topic, state, **overrides)
    finished = Counter(casts)
    consumed = Counter(casts)
    notifications = rpc.NotificationObserver(conf, messaging.notification_transport(conf))
    worker = Worker(conf, extra_flows=[NoopFlow], observers=[notifications, FinishCounter(finished)])
    accept = worker.runner.accept

    def counting_accept(job, **options):
        accepted = accept(job, **options)
        consumed.tick()
        return accepted

    worker.runner.accept = counting_accept

    def start() -> None:
        worker.start(resume=False)
        deadline = time.monotonic() + 30
        while not worker.intake.connected and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop() -> None:
        worker.stop(timeout=60)
        notifications.close()

    measure(label, topic, casts, start, stop, finished)
    print(
        f"  {label}: consumed {consumed.rate():.0f} casts/s, finished {finished.rate():.0f} flows/s",
        file=sys.stderr,
    )
    return consumed.rate(), finished.rate()


def rows(casts: int = 3000) -> list[dict]:
    """Measure (a); see the module docstring."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="keramos-bench-rpc-") as tmp:
        state = Path(tmp)
        print(f"rpc: {casts} casts over RabbitMQ, sender in another process", file=sys.stderr)
        raw = raw_rate(casts, state)
        lean_consumed, lean_finished = keramos_rates(
            "keramos worker, rpc intake, memory state, no persistence",
            casts,
            state / "lean",
            drivers={"state_store": "noop"},
            persistence={"enabled": False},
            worker={"intake": "rpc"},
        )
        kombu_accepted, _ = keramos_rates(
            "keramos worker, kombu intake, memory state, no persistence",
            casts,
            state / "lean-kombu",
            drivers={"state_store": "noop"},
            persistence={"enabled": False},
            worker={"intake": "kombu"},
        )
        consumed, finished = keramos_rates(
            "keramos worker, default (kombu intake, SQLite state, durable flows)",
            casts,
            state / "default",
        )
    return [
        row("(a) casts consumed/s, rpc intake, memory state vs raw no-op endpoint", lean_consumed,
            raw, "casts/s", ">= 0.9"),
        row("(a) casts accepted/s, kombu intake (ack after take), memory state vs raw no-op "
            "endpoint", kombu_accepted, raw, "casts/s", ">= 0.9"),
        row("(a) casts accepted/s, default kombu intake, SQLite + durable vs raw", consumed, raw,
            "casts/s", ">= 0.9"),
        row("(a) flows finished/s, memory state vs raw no-op endpoint", lean_finished, raw,
            "flows/s", "info"),
        row("(a) flows finished/s, default SQLite + durable vs raw", finished, raw, "flows/s",
            "info"),
    ]


if __name__ == "__main__":
    print(format_table(rows(int(sys.argv[1]) if len(sys.argv) > 1 else 3000)))
