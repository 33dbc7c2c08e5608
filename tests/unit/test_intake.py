"""The kombu intake on kombu's in-memory transport: what is acknowledged, when, and what is not."""

from __future__ import annotations

import json
import threading
import time
import uuid

import kombu
import pytest

from keramos.framework import intake, messaging
from keramos.framework.config import make_conf
from keramos.framework.errors import ConfigError


def oslo_body(method: str, *, call: bool = False, **args) -> dict:
    message = {"method": method, "args": args, "version": "1.0", "_context_request_id": "req-1"}
    if call:
        message.update({"_msg_id": "m1", "_reply_q": "reply_x"})
    return {"oslo.version": "2.0", "oslo.message": json.dumps(message)}


def test_decode_reads_the_oslo_envelope_and_the_context():
    decoded = intake.decode(oslo_body("handle_event", envelope={"event": "e"}))
    assert decoded.method == "handle_event"
    assert decoded.args == {"envelope": {"event": "e"}}
    assert decoded.context == {"request_id": "req-1"}
    assert not decoded.call
    assert intake.decode(json.dumps(oslo_body("ping", call=True)).encode()).call


@pytest.mark.parametrize(
    "body",
    [
        b"\xff not json",
        "[1, 2]",
        {"oslo.version": "3.0", "oslo.message": "{}"},
        {"oslo.version": "2.0", "oslo.message": "{not json"},
        {"oslo.version": "2.0", "oslo.message": json.dumps({"args": {}})},
        {"oslo.version": "2.0", "oslo.message": json.dumps({"method": "m", "args": [1]})},
    ],
)
def test_decode_refuses_what_is_not_an_rpc_message(body):
    with pytest.raises(intake.Undecodable):
        intake.decode(body)


def test_an_excerpt_is_bounded():
    assert len(intake.excerpt(b"x" * 10_000)) == intake.EXCERPT_CHARS + 3


def test_queues_are_declared_as_oslo_messaging_declares_them():
    conf = make_conf(config_files=[])
    assert intake.durable(conf)
    assert intake.queue_arguments(conf) == {"x-queue-type": "quorum"}
    conf.set_override("rabbit_quorum_queue", False, group="oslo_messaging_rabbit")
    assert not intake.durable(conf) and intake.queue_arguments(conf) == {}


def test_auto_chooses_kombu_on_rabbitmq_and_rpc_elsewhere():
    rabbit = make_conf(config_files=[], overrides={"DEFAULT": {"transport_url": "rabbit://h/"}})
    fake = make_conf(config_files=[], overrides={"DEFAULT": {"transport_url": "fake://"}})
    assert intake.choose(rabbit) == "kombu"
    assert intake.choose(fake) == "rpc"
    fake.set_override("intake", "kombu", group="worker")
    with pytest.raises(ConfigError):
        intake.choose(fake)


def test_brokers_come_from_the_transport_url():
    conf = make_conf(
        config_files=[], overrides={"DEFAULT": {"transport_url": "rabbit://u:p%40ss@h1:5673,h2/vh"}}
    )
    found = [(b["hostname"], b["port"], b["userid"], b["password"]) for b in messaging.brokers(conf)]
    assert found == [("h1", 5673, "u", "p@ss"), ("h2", 5672, "guest", "guest")]
    assert {b["virtual_host"] for b in messaging.brokers(conf)} == {"vh"}


def test_the_backoff_doubles_up_to_its_bound_and_starts_over_after_a_success():
    backoff = intake.Backoff(0.5, 3.0)
    assert [backoff.failed() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.succeeded()
    assert not backoff.failing and backoff.failed() == 0.5


class FakeRunner:
    """take() fails ``failures`` times, then returns ``accepted``; records what it took."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.taken: list = []

    def take(self, envelope):
        if self.failures:
            self.failures -= 1
            raise RuntimeError("database is down")
        self.taken.append(envelope)
        return ("accepted", envelope["request_id"]) if envelope.get("request_id") else None


class FakeEndpoint:
    def __init__(self, runner: FakeRunner) -> None:
        self.runner = runner
        self.started: list = []
        self.contexts: list = []
        self.event = threading.Event()

    def admit(self, envelope, context=None):
        self.contexts.append(context)
        return self.runner.take(envelope)

    def start(self, accepted) -> None:
        self.started.append(accepted)
        self.event.set()


class MemoryBroker:
    """A kombu in-memory broker with the worker's exchange, cast and control queues."""

    def __init__(self) -> None:
        self.topic = f"t-{uuid.uuid4().hex[:8]}"
        self.conf = make_conf(
            config_files=[],
            overrides={
                "DEFAULT": {"transport_url": "fake://", "control_exchange": self.topic},
                "worker": {"topic": self.topic, "accept_threads": 2},
            },
        )
        self.connection = kombu.Connection("memory://")
        self.exchange = kombu.Exchange(self.topic, "topic", durable=True)
        self.control = kombu.Queue(
            f"{self.topic}-control", self.exchange, routing_key=f"{self.topic}-control"
        )
        self.control(self.connection.channel()).declare()
        kombu.Queue(self.topic, self.exchange, routing_key=self.topic)(
            self.connection.channel()
        ).declare()

    def intake(self, endpoint: FakeEndpoint) -> intake.KombuIntake:
        return intake.KombuIntake(self.conf, endpoint, broker_options=[{"hostname": "memory://"}])

    def publish(self, body, **options) -> None:
        kombu.Producer(self.connection.channel()).publish(
            body, exchange=self.exchange, routing_key=self.topic, **options
        )

    def depth(self, name: str) -> int:
        return self.connection.channel().queue_declare(name, passive=True).message_count


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def broker():
    broker = MemoryBroker()
    yield broker
    broker.connection.release()


def test_a_cast_is_taken_acknowledged_and_its_flow_started(broker):
    endpoint = FakeEndpoint(FakeRunner())
    running = broker.intake(endpoint)
    running.start()
    try:
        wait_until(lambda: running.connected)
        envelope = {"event": "e", "request_id": "req-a", "payload": {}}
        broker.publish(oslo_body("handle_event", envelope=envelope))
        assert endpoint.event.wait(10)
        assert endpoint.started == [("accepted", "req-a")]
        # The message's context (where a caster's trace context travels) reaches the endpoint.
        assert endpoint.contexts == [{"request_id": "req-1"}]
        wait_until(lambda: broker.depth(broker.topic) == 0 and running._in_flight == 0)
    finally:
        running.stop()
    assert not running.connected


def test_a_cast_that_could_not_be_recorded_goes_back_to_the_queue_until_it_is(broker):
    endpoint = FakeEndpoint(FakeRunner(failures=3))
    broker.publish(oslo_body("handle_event", envelope={"request_id": "req-b"}))
    running = broker.intake(endpoint)
    started = time.monotonic()
    running.start()
    try:
        assert endpoint.event.wait(20)
    finally:
        running.stop()
    # Backoff 0.2 + 0.4 + 0.8 s between the four deliveries: no busy loop.
    assert time.monotonic() - started >= 1.4
    assert endpoint.runner.taken == [{"request_id": "req-b"}]
    assert broker.depth(broker.topic) == 0


def test_undecodable_messages_are_dropped_and_calls_forwarded_to_the_control_topic(broker, caplog):
    endpoint = FakeEndpoint(FakeRunner())
    broker.publish(b"\x00garbage" * 100, content_type="application/octet-stream")
    broker.publish({"no": "method"})
    broker.publish(oslo_body("get_status", call=True, request_id="req-c"))
    running = broker.intake(endpoint)
    running.start()
    try:
        wait_until(lambda: broker.depth(f"{broker.topic}-control") == 1)
        wait_until(lambda: broker.depth(broker.topic) == 0)
    finally:
        running.stop()
    assert endpoint.runner.taken == []
    dropped = [r.getMessage() for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(dropped) == 2
    assert all(len(line) < intake.EXCERPT_CHARS + 200 for line in dropped)
