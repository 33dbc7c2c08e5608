"""Load balancer flows: ``push_config``."""

from __future__ import annotations

from typing import Any

from taskflow.patterns import linear_flow

from keramos.flows.tasks import loadbalancer as tasks
from keramos.flows.templates import BALANCE, DEFAULT_CONNECTION_LIMIT, ID_PATTERN, PROTOCOLS, render_haproxy_config
from keramos.framework.contracts import FlowFactory
from keramos.framework.errors import PayloadError
from keramos.framework.schema import IDENTIFIER_PATTERN, Field, ip_address

_ID = Field(str, pattern=ID_PATTERN)
_ADDRESS = Field(str, max_length=64, constraint=ip_address)
_PORT = Field(int, minimum=1, maximum=65535)

#: A member of a pool: what :func:`~keramos.flows.templates.render_haproxy_config` renders.
MEMBER = Field(
    dict,
    fields={"id": _ID, "address": _ADDRESS, "port": _PORT, "weight": Field(int, default=1, minimum=0, maximum=256)},
)
#: A listener: ``{id, protocol, address, port, default_pool, connection_limit?}``.
LISTENER = Field(
    dict,
    fields={
        "id": _ID,
        "protocol": Field(str, choices=PROTOCOLS),
        "address": _ADDRESS,
        "port": _PORT,
        "default_pool": _ID,
        "connection_limit": Field(int, default=DEFAULT_CONNECTION_LIMIT, minimum=1, maximum=1_000_000),
    },
)
#: A pool: ``{id, protocol, algorithm?, health_check?, members: [MEMBER]}``.
POOL = Field(
    dict,
    fields={
        "id": _ID,
        "protocol": Field(str, choices=PROTOCOLS),
        "algorithm": Field(str, default="ROUND_ROBIN", choices=tuple(BALANCE)),
        "health_check": Field(bool, default=False),
        "members": Field(list, items=MEMBER, max_items=1000),
    },
)
LISTENERS = Field(
    list,
    items=LISTENER,
    min_items=1,
    max_items=100,
    help="[{id, protocol HTTP|TCP, address, port, default_pool, connection_limit?}]",
)
POOLS = Field(
    list,
    items=POOL,
    max_items=100,
    help="[{id, protocol, algorithm?, health_check?, members: [{id, address, port, weight?}]}]",
)


def _renders(lb: dict[str, Any]) -> str | None:
    """What the parts of a load balancer description must satisfy together (each listener's
    pool exists and speaks its protocol, no id used twice): ``None``, or what is wrong."""
    try:
        render_haproxy_config(lb["lb_id"], lb["listeners"], lb["pools"])
    except PayloadError as error:
        return f"is not a usable load balancer: {error}"
    return None


#: A whole load balancer, ``{lb_id, listeners, pools}``, as ``create_amphora`` carries it.
LOAD_BALANCER = Field(
    dict,
    fields={"lb_id": _ID, "listeners": LISTENERS, "pools": POOLS},
    constraint=_renders,
)


class PushConfig(FlowFactory):
    """Render a load balancer's HAProxy configuration and make all its amphorae run it.

    The description is checked and rendered first (a bad one burns no version), then a new
    version is handed out and pushed to every amphora at once; each agent checks it with
    ``haproxy -c`` and reloads. If any amphora refuses or fails, every amphora is brought back to
    the previous configuration under a newer version, so that no amphora is left running a
    configuration the others do not.
    """

    name = "push_config"
    version = "1.0"
    reusable = True
    payload = {
        "lb_id": Field(str, pattern=ID_PATTERN, help="load balancer whose configuration is pushed"),
        "amphora_ids": Field(
            list,
            items=Field(str, pattern=IDENTIFIER_PATTERN),
            min_items=1,
            max_items=100,
            help="the load balancer's amphorae (each READY, with an address)",
        ),
        "listeners": LISTENERS,
        "pools": POOLS,
    }
    resource_field = "lb_id"
    result_keys = ("running_version",)

    def build(self) -> linear_flow.Flow:
        drivers = self.drivers
        return linear_flow.Flow(self.name).add(
            tasks.RenderHaproxyConfig(),
            tasks.LoadAmphoraEndpoints(drivers.state_store),
            tasks.AllocateConfigVersion(drivers.state_store),
            tasks.PushConfigToAmphorae(drivers.amphora, drivers.state_store),
            tasks.RecordRunningVersion(drivers.state_store),
        )
