"""Where casts go: the oslo.messaging transports and the worker's target.

What an API service's client and the worker both need, and nothing more: importing it (or
:mod:`.client`) pulls in oslo.messaging but neither the runner, taskflow nor SQLAlchemy.
"""

from __future__ import annotations

import ssl
import time
from typing import Any

import kombu
import oslo_messaging
from oslo_config import cfg

from keramos.framework.errors import BrokerUnreachable

#: Version of the RPC interface (the envelope and method names), not of the events it carries.
#: 1.1 added ``get_progress``.
RPC_API_VERSION = "1.1"
#: Transports of ``[DEFAULT] transport_url`` that are RabbitMQ.
RABBIT_TRANSPORTS = ("rabbit", "kombu")
#: Seconds a connection attempt to RabbitMQ may take.
CONNECT_TIMEOUT = 10.0


def rpc_transport(conf: cfg.ConfigOpts) -> oslo_messaging.Transport:
    """The RPC transport of ``[DEFAULT] transport_url``."""
    return oslo_messaging.get_rpc_transport(conf)


def notification_transport(conf: cfg.ConfigOpts) -> oslo_messaging.Transport:
    """The notification transport (``[oslo_messaging_notifications] transport_url`` or RPC's)."""
    return oslo_messaging.get_notification_transport(conf)


def worker_target(conf: cfg.ConfigOpts, *, server: str | None = None) -> oslo_messaging.Target:
    """The target casts are sent to and the worker consumes from."""
    return oslo_messaging.Target(topic=conf.worker.topic, server=server, version=RPC_API_VERSION)


def control_topic(conf: cfg.ConfigOpts) -> str:
    """The topic of the calls clients make to workers (``get_status``, ``ping``).

    Not the cast topic: there a worker's intake consumes with its own acknowledgements, and the
    calls are served by an oslo.messaging RPC server of their own.
    """
    return f"{conf.worker.topic}-control"


def control_target(conf: cfg.ConfigOpts, *, server: str | None = None) -> oslo_messaging.Target:
    """The target calls are sent to and every worker serves."""
    return oslo_messaging.Target(topic=control_topic(conf), server=server, version=RPC_API_VERSION)


def brokers(conf: cfg.ConfigOpts) -> list[dict[str, Any]]:
    """kombu connection arguments for each host of ``[DEFAULT] transport_url``, in order."""
    url = oslo_messaging.TransportURL.parse(conf, conf.transport_url)
    rabbit = conf.oslo_messaging_rabbit
    common: dict[str, Any] = {
        "transport": "pyamqp",
        "virtual_host": url.virtual_host or "/",
        "heartbeat": rabbit.heartbeat_timeout_threshold,
        "login_method": rabbit.rabbit_login_method,
        "connect_timeout": CONNECT_TIMEOUT,
    }
    if rabbit.ssl:
        options: dict[str, Any] = {"cert_reqs": ssl.CERT_REQUIRED}
        if rabbit.ssl_ca_file:
            options["ca_certs"] = rabbit.ssl_ca_file
        if rabbit.ssl_cert_file:
            options["certfile"] = rabbit.ssl_cert_file
        if rabbit.ssl_key_file:
            options["keyfile"] = rabbit.ssl_key_file
        common["ssl"] = options
    hosts = url.hosts or [oslo_messaging.TransportHost(hostname="localhost")]
    return [
        {
            **common,
            "hostname": host.hostname or "localhost",
            "port": host.port or (5671 if rabbit.ssl else 5672),
            "userid": host.username or "guest",
            "password": host.password or "guest",
        }
        for host in hosts
    ]


def is_rabbit(conf: cfg.ConfigOpts) -> bool:
    """Whether ``[DEFAULT] transport_url`` names RabbitMQ."""
    return oslo_messaging.TransportURL.parse(conf, conf.transport_url).transport in RABBIT_TRANSPORTS


def wait_for_broker(conf: cfg.ConfigOpts, timeout: float) -> None:
    """Return once a RabbitMQ host of ``[DEFAULT] transport_url`` accepts a connection.

    Raises :class:`BrokerUnreachable`, naming every host and why it failed, when none does
    within ``timeout`` seconds. oslo.messaging itself retries its first connection forever,
    which is what a worker wants and what a command a person waits for must not do. Other
    transports (``fake://``) return at once.
    """
    if not is_rabbit(conf):
        return
    deadline = time.monotonic() + timeout
    failures: dict[str, str] = {}
    while True:
        for options in brokers(conf):
            where = f"RabbitMQ at {options['hostname']}:{options['port']}"
            remaining = deadline - time.monotonic()
            connect_timeout = max(0.1, min(remaining, CONNECT_TIMEOUT))
            try:
                with kombu.Connection(**{**options, "connect_timeout": connect_timeout}) as link:
                    link.ensure_connection(max_retries=0)
            except Exception as error:
                failures[where] = f"{type(error).__name__}: {error}"
            else:
                return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            reasons = "; ".join(f"{where}: {reason}" for where, reason in failures.items())
            raise BrokerUnreachable(f"no answer within {timeout:g}s from {reasons}")
        time.sleep(min(0.5, remaining))
