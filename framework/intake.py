"""How a worker takes casts off the queue without losing one.

oslo.messaging's RPC server acknowledges a message to RabbitMQ before it hands it to the
endpoint, so a worker killed in between loses that cast with no record at all. On RabbitMQ the
worker therefore consumes its topic queue itself, with kombu (:class:`KombuIntake`): it
acknowledges a cast only once :meth:`~keramos.framework.runner.FlowRunner.take` returned, that
is once the cast is recorded ``pending`` with its flow detail (or recorded as refused). If
``take`` raises (state store or persistence down) the cast goes back to the queue after a
bounded backoff. A worker killed at any moment leaves every cast either recorded (resumed by its
next start) or unacknowledged (delivered again).

The messages are oslo.messaging's (:func:`decode`): API services keep casting with
:class:`~keramos.framework.client.KeramosClient`, and the queue and exchange are declared as
oslo.messaging declares them for the same topic. Calls (``get_status``, ``ping``) go to the
control topic, served by an oslo.messaging RPC server in every worker; a message other than a
``handle_event`` cast found on the cast queue is forwarded there.

Other transports (``fake://``: the demo, the testing kit) keep the RPC server
(:class:`RpcIntake`); ``[worker] intake`` chooses.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import amqp.exceptions
import kombu
import kombu.exceptions
import oslo_messaging
from oslo_config import cfg
from oslo_log import log as logging

from keramos.framework import messaging, rpc
from keramos.framework.errors import ConfigError

LOG = logging.getLogger(__name__)

#: Characters of an undecodable message shown in the log.
EXCERPT_CHARS = 200
#: Seconds before the first and the longest wait between two connection attempts.
RECONNECT_BACKOFF = (0.5, 30.0)
#: Seconds before the first and the longest wait before a cast that could not be recorded goes
#: back to the queue: a dead database does not spin the CPU.
REQUEUE_BACKOFF = (0.2, 10.0)
CONNECT_TIMEOUT = messaging.CONNECT_TIMEOUT
#: Seconds :meth:`KombuIntake.stop` waits for the casts being taken to be acknowledged.
STOP_TIMEOUT = 10.0

_IDLE_POLL = 1.0
_BUSY_POLL = 0.002
_BACKOFF_POLL = 0.1


class Intake(Protocol):
    """What a worker takes casts with: started, stopped, and whether it reaches the broker."""

    @property
    def connected(self) -> bool:
        """``False`` while the intake cannot reach the broker (the worker is degraded)."""

    def start(self) -> None:
        """Start taking casts."""

    def stop(self) -> None:
        """Stop taking casts; the casts being taken are acknowledged or go back to the queue."""


class Undecodable(ValueError):
    """A message that is not an oslo.messaging RPC message: it can never succeed."""


@dataclasses.dataclass(frozen=True)
class RpcMessage:
    """An oslo.messaging RPC message: the method, its arguments and the caller's context."""

    method: str
    args: dict[str, Any]
    version: str | None
    context: dict[str, Any]
    call: bool


def decode(body: Any) -> RpcMessage:
    """Decode an oslo.messaging message body (``{"oslo.version": "2.0", "oslo.message": ...}``).

    The unenveloped form (the message itself) is accepted too, as oslo.messaging does. Raises
    :class:`Undecodable` for anything else.
    """
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except ValueError as error:
            raise Undecodable(f"not JSON: {error}") from None
    if not isinstance(body, dict):
        raise Undecodable(f"not an object but {type(body).__name__}")
    if "oslo.message" in body:
        version = str(body.get("oslo.version", ""))
        if version.split(".")[0] != "2":
            raise Undecodable(f"envelope version {version!r} (2.x is understood)")
        try:
            body = json.loads(body["oslo.message"])
        except (TypeError, ValueError) as error:
            raise Undecodable(f"oslo.message is not JSON: {error}") from None
        if not isinstance(body, dict):
            raise Undecodable(f"oslo.message is not an object but {type(body).__name__}")
    method = body.get("method")
    if not isinstance(method, str) or not method:
        raise Undecodable("no method")
    args = body.get("args", {})
    if not isinstance(args, dict):
        raise Undecodable(f"args is not an object but {type(args).__name__}")
    version = body.get("version")
    return RpcMessage(
        method=method,
        args=args,
        version=version if isinstance(version, str) else None,
        context={
            key.removeprefix("_context_"): value
            for key, value in body.items()
            if key.startswith("_context_")
        },
        call="_msg_id" in body or "_reply_q" in body,
    )


def excerpt(raw: Any) -> str:
    """At most :data:`EXCERPT_CHARS` characters of ``raw`` for a log line."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else repr(raw)
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."


def durable(conf: cfg.ConfigOpts) -> bool:
    """Whether oslo.messaging declares topic queues and exchanges durable (as it decides)."""
    rabbit = conf.oslo_messaging_rabbit
    return bool(rabbit.amqp_durable_queues or rabbit.rabbit_quorum_queue)


def queue_arguments(conf: cfg.ConfigOpts) -> dict[str, Any]:
    """The arguments oslo.messaging declares a topic queue with: RabbitMQ refuses others."""
    rabbit = conf.oslo_messaging_rabbit
    if rabbit.rabbit_quorum_queue and rabbit.rabbit_ha_queues:
        raise ConfigError("rabbit_quorum_queue and rabbit_ha_queues are both enabled")
    arguments: dict[str, Any] = {}
    if rabbit.rabbit_ha_queues:
        arguments["x-ha-policy"] = "all"
    if rabbit.rabbit_quorum_queue:
        arguments["x-queue-type"] = "quorum"
        for option, argument in (
            ("rabbit_quorum_delivery_limit", "x-delivery-limit"),
            ("rabbit_quorum_max_memory_length", "x-max-in-memory-length"),
            ("rabbit_quorum_max_memory_bytes", "x-max-in-memory-bytes"),
        ):
            if rabbit[option]:
                arguments[argument] = rabbit[option]
    return arguments


def choose(conf: cfg.ConfigOpts) -> str:
    """The intake ``[worker] intake`` names: ``kombu`` or ``rpc`` (``auto`` decided)."""
    transport = oslo_messaging.TransportURL.parse(conf, conf.transport_url).transport
    wanted = conf.worker.intake
    if wanted == "auto":
        return "kombu" if transport in messaging.RABBIT_TRANSPORTS else "rpc"
    if wanted == "kombu" and transport not in messaging.RABBIT_TRANSPORTS:
        raise ConfigError(f"[worker] intake = kombu needs a rabbit:// transport, not {transport}")
    return wanted


def build(
    conf: cfg.ConfigOpts, transport: oslo_messaging.Transport, endpoint: rpc.WorkerEndpoint
) -> Intake:
    """The intake :func:`choose` names, taking casts for ``endpoint``."""
    if choose(conf) == "kombu":
        return KombuIntake(conf, endpoint)
    return RpcIntake(conf, transport, endpoint)


class RpcIntake:
    """The ``rpc`` intake: an oslo.messaging RPC server on the worker topic.

    It acknowledges a cast before ``handle_event`` runs; for transports other than RabbitMQ.
    """

    def __init__(
        self, conf: cfg.ConfigOpts, transport: oslo_messaging.Transport, endpoint: rpc.WorkerEndpoint
    ) -> None:
        self._server = rpc.rpc_server(conf, transport, endpoint)

    @property
    def connected(self) -> bool:
        """Always ``True``: oslo.messaging reconnects on its own and does not tell."""
        return True

    def start(self) -> None:
        """Start the RPC server."""
        self._server.start()

    def stop(self) -> None:
        """Stop the RPC server and wait for the casts it is handing over."""
        self._server.stop()
        self._server.wait()


class Backoff:
    """A bounded exponential backoff shared by threads: ``first``, doubled up to ``longest``."""

    def __init__(self, first: float, longest: float) -> None:
        self.first = first
        self.longest = longest
        self._next = first
        self._failing = False
        self._lock = threading.Lock()

    @property
    def failing(self) -> bool:
        """Whether the last outcome was a failure."""
        return self._failing

    def failed(self) -> float:
        """Note a failure; returns the seconds to wait before trying again."""
        with self._lock:
            delay = self._next
            self._next = min(self._next * 2, self.longest)
            self._failing = True
            return delay

    def succeeded(self) -> None:
        """Note a success: the next failure waits ``first`` again."""
        if self._failing:
            with self._lock:
                self._next = self.first
                self._failing = False


@dataclasses.dataclass(frozen=True)
class _Settle:
    generation: int
    message: kombu.Message
    requeue: bool


class KombuIntake:
    """Consumes the worker topic's queue with kombu; acknowledges a cast once it is taken.

    One consumer thread owns the connection (kombu channels are not thread-safe): it receives
    messages, hands ``handle_event`` casts to ``[worker] accept_threads`` threads and sends
    the acknowledgements they return. An accept thread calls ``FlowRunner.take``; when it
    returns the cast is acknowledged and its flow queued on ``endpoint``'s flow threads. When it
    raises, the cast goes back to the queue after :data:`REQUEUE_BACKOFF`. At most twice
    ``accept_threads`` casts are unacknowledged at once (the prefetch).

    When the broker goes away the intake logs one line, reconnects with :data:`RECONNECT_BACKOFF`
    and logs one line when it is back; flows keep running meanwhile. :attr:`connected` tells.

    ``broker_options`` replaces the connection arguments built from ``[DEFAULT] transport_url``
    (one dict of :class:`kombu.Connection` arguments per broker, tried in turn).
    """

    def __init__(
        self,
        conf: cfg.ConfigOpts,
        endpoint: rpc.WorkerEndpoint,
        *,
        broker_options: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        self.conf = conf
        self.endpoint = endpoint
        self.runner = endpoint.runner
        self.topic = conf.worker.topic
        self.control_topic = messaging.control_topic(conf)
        self.prefetch = 2 * conf.worker.accept_threads
        self._brokers = [dict(options) for options in broker_options or messaging.brokers(conf)]
        self._exchange_name = conf.control_exchange
        self._durable = durable(conf)
        self._auto_delete = bool(conf.oslo_messaging_rabbit.amqp_auto_delete)
        self._queue_arguments = queue_arguments(conf)
        self._accept_threads = conf.worker.accept_threads
        self._accepts: ThreadPoolExecutor | None = None
        self._settles: queue.SimpleQueue[_Settle] = queue.SimpleQueue()
        self._in_flight = 0
        self._generation = 0
        self._connected = False
        self._lost_at: float | None = None
        self._reconnect = Backoff(*RECONNECT_BACKOFF)
        self._requeue = Backoff(*REQUEUE_BACKOFF)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: kombu.Producer | None = None
        self._exchange: kombu.Exchange | None = None

    @property
    def connected(self) -> bool:
        """``True`` while consuming from the broker; ``False`` before, while reconnecting, after."""
        return self._connected

    def start(self) -> None:
        """Start the consumer thread (it connects, declares the queue and consumes)."""
        self._stopping.clear()
        self._accepts = ThreadPoolExecutor(self._accept_threads, thread_name_prefix="keramos-accept")
        self._thread = threading.Thread(target=self._serve, name="keramos-intake", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop consuming; wait up to :data:`STOP_TIMEOUT` for the casts being taken.

        Casts taken by then are acknowledged; the others go back to the queue when the
        connection closes.
        """
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT + CONNECT_TIMEOUT + 5)
        if self._accepts is not None:
            self._accepts.shutdown(wait=False)

    def _serve(self) -> None:
        for options in itertools.cycle(self._brokers):
            if self._stopping.is_set():
                return
            try:
                with kombu.Connection(**options) as connection:
                    self._consume(connection)
                return
            except Exception as error:
                self._connected = False
                if self._stopping.is_set():
                    return
                self._lost(options, error)
                self._stopping.wait(self._reconnect.failed())

    def _lost(self, options: Mapping[str, Any], error: Exception) -> None:
        where = f"{options.get('hostname')}:{options.get('port')}"
        expected = isinstance(
            error, (OSError, amqp.exceptions.AMQPError, kombu.exceptions.KombuError)
        )
        if not expected:
            LOG.exception("intake: unexpected error on %s; reconnecting", where)
        elif isinstance(error, _QueueMismatch):
            LOG.error("intake: %s", error)
        elif self._lost_at is None:
            LOG.warning(
                "intake: lost the broker %s (%s: %s); reconnecting, no cast is taken until then",
                where,
                type(error).__name__,
                error,
            )
        if self._lost_at is None:
            self._lost_at = time.monotonic()

    def _declare(self, connection: kombu.Connection) -> tuple[Any, kombu.Queue, kombu.Exchange]:
        channel = connection.channel()
        exchange = kombu.Exchange(
            self._exchange_name, "topic", durable=self._durable, auto_delete=self._auto_delete
        )
        try:
            exchange(channel).declare()
        except amqp.exceptions.PreconditionFailed as error:
            if "durable" not in str(error):
                raise
            # As oslo.messaging does: an exchange declared earlier, not durable, is used as it is.
            LOG.warning(
                "intake: exchange %s exists and is not durable (%s); using it as it is. Its "
                "bindings do not survive a broker restart: delete it once no service uses it",
                self._exchange_name,
                error,
            )
            channel = connection.channel()
            exchange = kombu.Exchange(
                self._exchange_name, "topic", durable=False, auto_delete=self._auto_delete
            )
            exchange(channel).declare()
        cast_queue = kombu.Queue(
            self.topic,
            exchange,
            routing_key=self.topic,
            durable=self._durable,
            auto_delete=self._auto_delete,
            queue_arguments=self._queue_arguments,
        )
        try:
            cast_queue(channel).declare()
        except amqp.exceptions.PreconditionFailed as error:
            raise _QueueMismatch(
                f"queue {self.topic} exists with other properties than "
                f"durable={self._durable}, arguments={self._queue_arguments} ({error}). A queue "
                f"made before durable queues: once it is empty, delete it "
                f"(rabbitmqctl delete_queue {self.topic}) and this worker declares it again"
            ) from error
        return channel, cast_queue, exchange

    def _consume(self, connection: kombu.Connection) -> None:
        connection.connect()
        channel, cast_queue, exchange = self._declare(connection)
        self._exchange = exchange
        self._producer = kombu.Producer(channel)
        channel.basic_qos(0, self.prefetch, False)
        self._generation += 1
        generation = self._generation
        consumer = kombu.Consumer(
            channel,
            queues=[cast_queue],
            on_message=lambda message: self._received(generation, message),
            auto_declare=False,
            no_ack=False,
        )
        consumer.consume()
        self._connected = True
        self._reconnect.succeeded()
        if self._lost_at is None:
            LOG.info("intake: consuming queue %s on %s", self.topic, connection.as_uri())
        else:
            LOG.warning(
                "intake: broker %s back after %.1fs; consuming queue %s",
                connection.as_uri(),
                time.monotonic() - self._lost_at,
                self.topic,
            )
            self._lost_at = None
        while not self._stopping.is_set():
            self._settle(generation)
            self._poll(connection, self._poll_timeout())
        consumer.cancel()
        deadline = time.monotonic() + STOP_TIMEOUT
        while self._in_flight and time.monotonic() < deadline:
            self._settle(generation)
            self._poll(connection, _BUSY_POLL)
        self._settle(generation)
        self._connected = False

    def _poll_timeout(self) -> float:
        if not self._in_flight:
            return _IDLE_POLL
        return _BACKOFF_POLL if self._requeue.failing else _BUSY_POLL

    @staticmethod
    def _poll(connection: kombu.Connection, timeout: float) -> None:
        try:
            connection.drain_events(timeout=timeout)
        except TimeoutError:
            pass
        connection.heartbeat_check()

    def _settle(self, generation: int) -> None:
        while True:
            try:
                settle = self._settles.get_nowait()
            except queue.Empty:
                return
            self._in_flight -= 1
            if settle.generation != generation:
                continue  # its channel is gone: the broker delivers it again
            if settle.requeue:
                settle.message.requeue()
            else:
                settle.message.ack()

    def _received(self, generation: int, message: kombu.Message) -> None:
        try:
            if message.content_type not in ("application/json", "", None):
                raise Undecodable(f"content type {message.content_type}")
            decoded = decode(message.body)
        except Undecodable as error:
            LOG.error("intake: dropped an undecodable message (%s): %s", error, excerpt(message.body))
            message.ack()
            return
        if decoded.method != "handle_event":
            self._forward(message, decoded)
            return
        self._in_flight += 1
        self._accepts.submit(
            self._accept, generation, message, decoded.args.get("envelope"), decoded.context
        )

    def _forward(self, message: kombu.Message, decoded: RpcMessage) -> None:
        """Hand a message that is not a cast (a call of an older client) to the control topic."""
        LOG.debug("intake: forwarding %s to %s", decoded.method, self.control_topic)
        self._producer.publish(
            message.body,
            exchange=self._exchange,
            routing_key=self.control_topic,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            headers=message.headers,
            retry=False,
        )
        message.ack()

    def _accept(
        self, generation: int, message: kombu.Message, envelope: Any, context: dict[str, Any]
    ) -> None:
        try:
            accepted = self.endpoint.admit(envelope, context)
        except Exception as error:
            delay = self._requeue.failed()
            request_id = envelope.get("request_id") if isinstance(envelope, Mapping) else None
            LOG.warning(
                "intake: could not record cast %s (%s: %s); back to the queue in %.1fs",
                request_id,
                type(error).__name__,
                error,
                delay,
            )
            self._stopping.wait(delay)
            self._settles.put(_Settle(generation, message, requeue=True))
            return
        self._requeue.succeeded()
        self._settles.put(_Settle(generation, message, requeue=False))
        if accepted is not None:
            self.endpoint.start(accepted)


class _QueueMismatch(kombu.exceptions.KombuError):
    """The cast queue exists with other properties than oslo.messaging would declare."""
