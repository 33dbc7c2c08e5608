"""Amphora lifecycle flows: ``create_amphora`` and ``delete_amphora``."""

from __future__ import annotations

from taskflow.patterns import linear_flow

from keramos.flows.tasks import amphora as tasks
from keramos.framework.contracts import FlowFactory
from keramos.framework.schema import IDENTIFIER_PATTERN, Field


class CreateAmphora(FlowFactory):
    """Record, certify, boot, wait for, plug and check a new amphora, then mark it READY.

    Any failure reverts every step: the instance, port, certificate and stored key are deleted
    and the amphora is left ERROR with the reason.
    """

    name = "create_amphora"
    version = "1.0"
    payload = {
        "amphora_id": Field(str, pattern=IDENTIFIER_PATTERN, help="id of the new amphora"),
        "image_id": Field(str, pattern=IDENTIFIER_PATTERN, help="image to boot"),
        "network_id": Field((str, type(None)), default=None, help="network to plug into"),
    }
    resource_field = "amphora_id"
    result_keys = ("amphora",)

    def build(self) -> linear_flow.Flow:
        drivers = self.drivers
        options = self.conf.amphora
        return linear_flow.Flow(self.name).add(
            tasks.RecordAmphora(drivers.state_store),
            tasks.IssueAmphoraServerCert(
                drivers.cert_generator, drivers.cert_manager, drivers.state_store
            ),
            tasks.BootAmphora(
                drivers.compute, drivers.cert_generator, drivers.cert_manager, drivers.state_store
            ),
            tasks.WaitForAmphoraActive(
                drivers.compute, timeout=options.active_timeout, interval=options.poll_interval
            ),
            tasks.PlugAmphoraNetwork(drivers.network),
            tasks.WaitForAmphoraAgent(drivers.amphora, timeout=options.agent_timeout),
            tasks.MarkAmphoraReady(drivers.state_store),
        )


class DeleteAmphora(FlowFactory):
    """Delete an amphora's instance, port and certificates and mark it DELETED."""

    name = "delete_amphora"
    version = "1.0"
    payload = {"amphora_id": Field(str, pattern=IDENTIFIER_PATTERN, help="amphora to delete")}
    resource_field = "amphora_id"

    def build(self) -> linear_flow.Flow:
        drivers = self.drivers
        return linear_flow.Flow(self.name).add(
            tasks.LoadAmphora(drivers.state_store),
            tasks.DeleteAmphoraResources(
                drivers.compute, drivers.network, drivers.cert_manager, drivers.state_store
            ),
            tasks.MarkAmphoraDeleted(drivers.state_store),
        )
