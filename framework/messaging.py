"""Where casts go: the oslo.messaging transports and the worker's target.

What an API service's client and the worker both need, and nothing more: importing it (or
:mod:`.client`) pulls in oslo.messaging but neither the runner, taskflow nor SQLAlchemy.
"""

from __future__ import annotations

import oslo_messaging
from oslo_config import cfg

#: Version of the RPC interface (the envelope and method names), not of the events it carries.
#: 1.1 added ``get_progress``.
RPC_API_VERSION = "1.1"


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
