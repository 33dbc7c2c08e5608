"""Amphora lifecycle flows: ``create_amphora``, ``delete_amphora`` and ``failover_amphora``.

Their options are the ``[amphora]`` group of :mod:`keramos.framework.config`.
"""

from __future__ import annotations

import dataclasses

from oslo_config import cfg
from taskflow import flow, task
from taskflow.patterns import linear_flow

from keramos.flows.images import VerifyImage
from keramos.flows.loadbalancer import LOAD_BALANCER
from keramos.flows.tasks import amphora as tasks
from keramos.flows.tasks import amphora_lifecycle as lifecycle
from keramos.flows.tasks import loadbalancer as lb_tasks
from keramos.framework.contracts import Drivers, FlowFactory
from keramos.framework.schema import IDENTIFIER_PATTERN, Field

GROUP = "amphora"

#: What the creation tasks read under ``amphora_id`` is ``replacement_id`` during a failover.
_REPLACEMENT = {"amphora_id": "replacement_id"}

def initial_config_subflow(drivers: Drivers) -> linear_flow.Flow:
    """Push the payload's load balancer configuration to the new amphora, as ``push_config``
    does, and record the amphora among the load balancer's members; nothing without ``lb``.

    Render, remember the load balancer's record, hand out a version, push it to this amphora,
    record the running version and the membership. On revert the record is put back as it was
    (the version handed out stays used: versions only grow) and the configuration is removed
    from the amphora. Without ``lb`` every task runs and does nothing (``lb_id`` is ``None``).
    """
    plan = lifecycle.PlanInitialConfig()
    push = linear_flow.Flow("push_initial_config").add(
        lb_tasks.RenderHaproxyConfig(),
        lifecycle.SnapshotLoadBalancer(drivers.state_store),
        lb_tasks.AllocateConfigVersion(drivers.state_store),
        lb_tasks.PushConfigToAmphora(drivers.amphora),
        lb_tasks.RecordRunningVersion(drivers.state_store),
        lifecycle.JoinLoadBalancer(drivers.state_store),
    )
    return linear_flow.Flow("initial_config").add(plan, push)


class _AmphoraFlowFactory(FlowFactory):
    """Shared by the flows that boot an amphora: options and the image verification flow."""

    def __init__(self, drivers: Drivers, conf: cfg.ConfigOpts) -> None:
        super().__init__(drivers, conf)
        self._verify_image = VerifyImage(drivers, conf)
        self._agent_config = tasks.agent_heartbeat_config(
            conf.amphora.controller_heartbeat_endpoints,
            conf.amphora.heartbeat_interval,
            conf.health.heartbeat_key,
        )

    def _image_subflow(self) -> linear_flow.Flow:
        """Verify a signed image with ``verify_image``'s tasks, or boot an unsigned one unverified
        when ``[amphora] require_signed_images`` is False; provides ``amphora_image``.

        The verification tasks need only ``image_id``, the same in both flows that boot, and
        ``image_signed``: they do nothing for an unsigned image.
        """
        check = lifecycle.CheckAmphoraImage(
            self.drivers.image_store, require_signed=self.conf[GROUP].require_signed_images
        )
        verified = self._verify_image.subflow("verify_amphora_image")
        return linear_flow.Flow("amphora_image").add(check, verified, lifecycle.UseAmphoraImage())

    def _boot_tasks(
        self, rebind: dict[str, str] | None, *, checks: tuple[task.Task, ...] = ()
    ) -> list[task.Task | flow.Flow]:
        """Record, run ``checks``, verify the image, certify, boot, wait, plug, wait for the
        agent, activate.

        In csr mode the amphora makes its own key: it is certified after the boot, once its agent
        answers, instead of before.
        """
        drivers = self.drivers
        options = self.conf[GROUP]
        csr_mode = options.certificate_mode == "csr"
        if csr_mode:
            certify = tasks.SignAmphoraCSR(
                drivers.amphora,
                drivers.cert_generator,
                drivers.cert_manager,
                drivers.state_store,
                timeout=options.agent_timeout,
                rebind=rebind,
            )
        else:
            certify = tasks.IssueAmphoraServerCert(
                drivers.cert_generator, drivers.cert_manager, drivers.state_store, rebind=rebind
            )
        return [
            tasks.RecordAmphora(drivers.state_store, rebind=rebind),
            *checks,
            self._image_subflow(),
            *([] if csr_mode else [certify]),
            tasks.BootAmphora(
                drivers.compute,
                drivers.cert_generator,
                drivers.cert_manager,
                drivers.state_store,
                amphora=drivers.amphora,
                agent_config=self._agent_config,
                amphora_makes_server_key=csr_mode,
                rebind=rebind,
            ),
            tasks.WaitForAmphoraActive(
                drivers.compute, timeout=options.active_timeout, interval=options.poll_interval
            ),
            tasks.PlugAmphoraNetwork(drivers.network, rebind=rebind),
            *([certify] if csr_mode else []),
            tasks.WaitForAmphoraAgent(drivers.amphora, timeout=options.agent_timeout, rebind=rebind),
            tasks.ActivateAmphora(drivers.amphora, drivers.state_store, rebind=rebind),
        ]


class CreateAmphora(_AmphoraFlowFactory):
    """Record, verify the image, certify, boot, wait for, plug, activate, configure an amphora,
    then mark it READY.

    Any failure reverts every step: the instance, port, certificate and stored key are deleted,
    a load balancer record touched is put back, and the amphora is left ERROR with the reason.
    """

    name = "create_amphora"
    version = "1.0"
    reusable = True
    payload = {
        "amphora_id": Field(str, pattern=IDENTIFIER_PATTERN, help="id of the new amphora"),
        "image_id": Field(str, pattern=IDENTIFIER_PATTERN, help="image to boot"),
        "network_id": Field((str, type(None)), default=None, help="network to plug into"),
        "lb": dataclasses.replace(
            LOAD_BALANCER,
            type=(dict, type(None)),
            default=None,
            help="initial load balancer configuration {lb_id, listeners, pools} as push_config",
        ),
    }
    resource_field = "amphora_id"
    result_keys = ("amphora",)

    def build(self) -> linear_flow.Flow:
        drivers = self.drivers
        return linear_flow.Flow(self.name).add(
            *self._boot_tasks(None, checks=(lifecycle.CheckInitialConfig(),)),
            initial_config_subflow(drivers),
            tasks.MarkAmphoraReady(drivers.state_store),
        )


class DeleteAmphora(FlowFactory):
    """Take an amphora out of its load balancers, delete its instance, port and certificates and
    mark it DELETED."""

    name = "delete_amphora"
    version = "1.0"
    reusable = True
    payload = {"amphora_id": Field(str, pattern=IDENTIFIER_PATTERN, help="amphora to delete")}
    resource_field = "amphora_id"

    def build(self) -> linear_flow.Flow:
        drivers = self.drivers
        return linear_flow.Flow(self.name).add(
            tasks.LoadAmphora(drivers.state_store),
            lifecycle.LeaveLoadBalancers(drivers.state_store),
            tasks.DeleteAmphoraResources(
                drivers.compute, drivers.network, drivers.cert_manager, drivers.state_store
            ),
            tasks.MarkAmphoraDeleted(drivers.state_store),
        )


class FailoverAmphora(_AmphoraFlowFactory):
    """Replace an amphora: boot the replacement first, move its load balancer configurations,
    then delete the old one (as Octavia does).

    The replacement is ``<original id>-fo-<8 hex digits>`` and gets its own server certificate;
    the old amphora's certificates are deleted with it. If anything fails before the old amphora
    is deleted, the replacement is deleted and the old amphora stays as it was.
    """

    name = "failover_amphora"
    version = "1.0"
    reusable = True
    payload = {"amphora_id": Field(str, pattern=IDENTIFIER_PATTERN, help="amphora to replace")}
    resource_field = "amphora_id"
    result_keys = ("amphora", "moved_loadbalancers")

    def build(self) -> linear_flow.Flow:
        drivers = self.drivers
        return linear_flow.Flow(self.name).add(
            lifecycle.LoadFailedAmphora(drivers.state_store),
            *self._boot_tasks(_REPLACEMENT),
            lifecycle.MoveLoadBalancerConfigs(drivers.amphora, drivers.state_store),
            tasks.MarkAmphoraReady(drivers.state_store, rebind=_REPLACEMENT),
            # The old amphora goes last, once its replacement is READY: nothing to undo then.
            tasks.DeleteAmphoraResources(
                drivers.compute,
                drivers.network,
                drivers.cert_manager,
                drivers.state_store,
                rebind={"amphora": "failed_amphora"},
            ),
            tasks.MarkAmphoraDeleted(drivers.state_store),
        )
