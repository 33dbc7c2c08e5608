"""Load balancer flows: ``push_config``."""

from __future__ import annotations

from taskflow.patterns import linear_flow

from keramos.flows.tasks import loadbalancer as tasks
from keramos.flows.templates import ID_PATTERN
from keramos.framework.contracts import FlowFactory
from keramos.framework.schema import Field


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
        "amphora_ids": Field(list, help="the load balancer's amphorae (each READY, with an address)"),
        "listeners": Field(
            list,
            help="[{id, protocol HTTP|TCP, address, port, default_pool, connection_limit?}]",
        ),
        "pools": Field(
            list,
            help="[{id, protocol, algorithm?, health_check?, members: [{id, address, port, weight?}]}]",
        ),
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
