"""Tasks that tie the amphora lifecycle to the other flows: the amphora's image verification,
its initial load balancer configuration, and what a failover moves to the replacement.

Load balancer membership is kept in ``LoadBalancerRecord.description["amphora_ids"]``, written
here when a configuration is pushed at creation and moved on failover.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Callable
from typing import Any

from oslo_log import log as logging
from taskflow import engines, task
from taskflow.patterns import linear_flow

from keramos.flows.tasks import amphora as amphora_tasks
from keramos.flows.tasks import loadbalancer as lb_tasks
from keramos.framework.contracts import AmphoraDriver, AmphoraEndpoint, ImageStore, StateStore
from keramos.framework.errors import Conflict, KeramosError, NotFound, PayloadError
from keramos.framework.images.signature import (
    REQUIRED_PROPERTIES,
    Reason,
    SignatureVerificationError,
)
from keramos.framework.records import AmphoraRecord, AmphoraStatus, LoadBalancerRecord
from keramos.framework.runner import jsonable

LOG = logging.getLogger(__name__)

#: Marks a replacement's id: ``<original>-fo-<8 hex digits>``; later failovers keep the original.
FAILOVER_MARK = "-fo-"
_REPLACEMENT_SUFFIX = re.compile(rf"{FAILOVER_MARK}[0-9a-f]{{8}}$")

#: Longest identifier the payload schema accepts (``IDENTIFIER_PATTERN``).
_MAX_ID = 128


def replacement_id_for(amphora_id: str) -> str:
    """A new amphora id derived from ``amphora_id``: ``<original>-fo-<8 hex digits>``.

    Only a replacement's own suffix is dropped: ``web-fo-prod`` is an original id and keeps its
    name."""
    original = _REPLACEMENT_SUFFIX.sub("", amphora_id)
    suffix = f"{FAILOVER_MARK}{uuid.uuid4().hex[:8]}"
    return original[: _MAX_ID - len(suffix)] + suffix


def _endpoint(amphora_id: str, instance: dict[str, Any]) -> dict[str, Any]:
    return {"amphora_id": amphora_id, "address": instance["address"], "port": instance["port"]}


def _member_ids(record: LoadBalancerRecord) -> list[str]:
    return list((record.description or {}).get("amphora_ids", []))


def swap_member(
    state_store: StateStore,
    lb_id: str,
    *,
    leaving: str | None,
    joining: str | None,
    members: list[str] | None = None,
) -> None:
    """Put ``joining`` in the place of ``leaving`` among a load balancer's members (either may be
    ``None``); ``members`` replaces the recorded list first. A missing load balancer is skipped."""
    record = state_store.get(LoadBalancerRecord, lb_id)
    if record is None:
        return
    current = _member_ids(record) if members is None else members
    kept = [member for member in current if member not in (leaving, joining)]
    state_store.update(
        LoadBalancerRecord,
        lb_id,
        description={
            **(record.description or {}),
            "amphora_ids": [*kept, joining] if joining else kept,
        },
    )


class VerifyAmphoraImage(task.Task):
    """Verify the amphora's image through the ``verify_image`` flow (verified image cache first).

    An image whose properties carry no signature at all boots unverified only when
    ``require_signed`` is False; otherwise, and whenever verification fails, the flow fails
    before anything boots. A verified image stays in the cache when a later task fails: the cache
    holds verified images for every boot, not resources of this amphora.
    """

    def __init__(
        self,
        image_store: ImageStore,
        verify_image_flow: Callable[[], linear_flow.Flow],
        *,
        require_signed: bool,
    ) -> None:
        super().__init__(name="verify_amphora_image", provides="amphora_image")
        self.image_store = image_store
        self.verify_image_flow = verify_image_flow
        self.require_signed = require_signed

    def execute(self, image_id: str) -> dict[str, Any]:
        properties = self.image_store.properties(image_id)
        if not any(name in properties for name in REQUIRED_PROPERTIES):
            if self.require_signed:
                raise SignatureVerificationError(
                    Reason.MISSING_PROPERTY,
                    f"image {image_id} is not signed and [amphora] require_signed_images is set",
                )
            LOG.warning("image %s is not signed; booting it unverified as configured", image_id)
            return {"image_id": image_id, "verified": False}
        results = engines.run(self.verify_image_flow(), store={"image_id": image_id})
        return {**results["image"], "verified": True}


class PushInitialConfig(task.Task):
    """Push the load balancer configuration carried by the payload (``lb``) to the new amphora.

    Runs ``push_config``'s tasks on this amphora alone and records it as a member of the load
    balancer. ``lb`` is ``{"lb_id", "listeners", "pools"}`` as in ``push_config``; ``None`` pushes
    nothing. On revert the load balancer's record is put back as it was (the version handed out
    stays used: versions only grow) and the configuration removed from the amphora.
    """

    def __init__(self, amphora: AmphoraDriver, state_store: StateStore) -> None:
        super().__init__(name="push_initial_config", provides="initial_config")
        self.amphora = amphora
        self.state_store = state_store

    def execute(
        self, amphora_id: str, lb: dict[str, Any] | None, amphora_instance: dict[str, Any]
    ) -> dict[str, Any] | None:
        if lb is None:
            return None
        missing = sorted({"lb_id", "listeners", "pools"} - set(lb))
        if missing:
            raise PayloadError(f"lb lacks {', '.join(missing)}")
        lb_id = lb["lb_id"]
        previous = self.state_store.get(LoadBalancerRecord, lb_id)
        snapshot = (
            {
                "config": previous.config,
                "running_version": previous.running_version,
                "description": previous.description,
            }
            if previous is not None
            else {"config": None, "running_version": 0, "description": None}
        )
        flow = linear_flow.Flow(f"initial_config_{lb_id}").add(
            lb_tasks.RenderHaproxyConfig(),
            lb_tasks.AllocateConfigVersion(self.state_store),
            lb_tasks.PushConfigToAmphorae(self.amphora, self.state_store),
            lb_tasks.RecordRunningVersion(self.state_store),
        )
        store = {
            "lb_id": lb_id,
            "listeners": lb["listeners"],
            "pools": lb["pools"],
            "amphora_endpoints": [_endpoint(amphora_id, amphora_instance)],
        }
        version = engines.run(flow, store=store)["running_version"]
        # Recording the running version rewrote the description: the members come from before.
        swap_member(
            self.state_store,
            lb_id,
            leaving=None,
            joining=amphora_id,
            members=_member_ids(previous) if previous is not None else [],
        )
        return {
            "lb_id": lb_id,
            "config_version": version,
            "previous": jsonable(snapshot),
            "endpoint": store["amphora_endpoints"][0],
        }

    def revert(self, result: Any, **kwargs: Any) -> None:
        if not isinstance(result, dict):
            return
        endpoint = result["endpoint"]
        try:
            self.amphora.delete_config(
                AmphoraEndpoint(endpoint["amphora_id"], endpoint["address"], endpoint["port"]),
                result["lb_id"],
            )
        except KeramosError as error:
            # The instance is deleted next, and the configuration with it.
            LOG.warning("amphora %s keeps its configuration until deleted: %s", endpoint, error)
        self.state_store.update(LoadBalancerRecord, result["lb_id"], **result["previous"])


class LoadFailedAmphora(task.Task):
    """Claim the amphora to fail over and name its replacement.

    The amphora turns PENDING_FAILOVER from READY or ERROR in one compare-and-set, so that of two
    failovers cast for it (two health managers, an operator and a health manager) one runs and
    the other is refused before it boots anything. On revert it gets its status back.
    """

    default_provides = ("failed_amphora", "replacement_id", "image_id", "network_id")
    _FAILABLE = (AmphoraStatus.READY, AmphoraStatus.ERROR)

    def __init__(self, state_store: StateStore) -> None:
        super().__init__(name="load_failed_amphora")
        self.state_store = state_store

    def execute(self, amphora_id: str) -> tuple[dict[str, Any], str, str, None]:
        record = self.state_store.get(AmphoraRecord, amphora_id)
        if record is None or record.status in (AmphoraStatus.DELETED, AmphoraStatus.PENDING_DELETE):
            raise NotFound(f"no amphora {amphora_id} to fail over")
        if not record.image_id:
            raise KeramosError(f"amphora {amphora_id} has no image on record to boot again")
        try:
            self.state_store.update_if(
                AmphoraRecord,
                amphora_id,
                {"status": self._FAILABLE},
                status=AmphoraStatus.PENDING_FAILOVER,
            )
        except Conflict as error:
            raise Conflict(f"amphora {amphora_id} is not failed over: {error}") from None
        return jsonable(record.to_dict()), replacement_id_for(amphora_id), record.image_id, None

    def revert(self, amphora_id: str, result: Any, **kwargs: Any) -> None:
        if not isinstance(result, (list, tuple)):
            return
        with contextlib.suppress(Conflict, NotFound):
            self.state_store.update_if(
                AmphoraRecord,
                amphora_id,
                {"status": (AmphoraStatus.PENDING_FAILOVER,)},
                status=result[0]["status"],
            )


class MoveLoadBalancerConfigs(task.Task):
    """Push the configuration of every load balancer of the old amphora to the replacement.

    The load balancers are those recording the old amphora as a member, and those the old agent
    still reports if it answers at once (it usually does not: it failed). Each running
    configuration is pushed under its running version; the replacement then takes the old
    amphora's place among the members. On revert the configurations are removed from the
    replacement and the membership is put back.
    """

    def __init__(self, amphora: AmphoraDriver, state_store: StateStore) -> None:
        super().__init__(name="move_loadbalancer_configs", provides="moved_loadbalancers")
        self.amphora = amphora
        self.state_store = state_store

    def _reported_by_old_agent(self, failed_amphora: dict[str, Any]) -> set[str]:
        if not failed_amphora.get("address"):
            return set()
        endpoint = AmphoraEndpoint(
            failed_amphora["amphora_id"], failed_amphora["address"], failed_amphora["agent_port"]
        )
        try:
            return set(self.amphora.get_info(endpoint).get("loadbalancers", {}))
        except KeramosError as error:
            LOG.info("failed amphora %s does not answer: %s", endpoint.amphora_id, error)
            return set()

    def execute(
        self,
        amphora_id: str,
        replacement_id: str,
        failed_amphora: dict[str, Any],
        amphora_instance: dict[str, Any],
    ) -> list[str]:
        reported = self._reported_by_old_agent(failed_amphora)
        records = [
            record
            for record in self.state_store.find(LoadBalancerRecord)
            if record.config is not None
            and (amphora_id in _member_ids(record) or record.lb_id in reported)
        ]
        endpoint = AmphoraEndpoint(
            replacement_id, amphora_instance["address"] or "", amphora_instance["port"]
        )
        for record in records:
            self.amphora.upload_config(
                endpoint, record.lb_id, record.config, record.running_version
            )
        # Memberships change only once every configuration is on the replacement, so that a
        # failed upload leaves nothing for the revert to put back.
        moved = []
        for record in records:
            swap_member(self.state_store, record.lb_id, leaving=amphora_id, joining=replacement_id)
            self.state_store.update(
                AmphoraRecord, replacement_id, config_version=record.running_version
            )
            moved.append(record.lb_id)
        return moved

    def revert(
        self,
        amphora_id: str,
        replacement_id: str,
        amphora_instance: dict[str, Any],
        result: Any,
        **kwargs: Any,
    ) -> None:
        if not isinstance(result, list):
            return
        endpoint = AmphoraEndpoint(
            replacement_id, amphora_instance["address"] or "", amphora_instance["port"]
        )
        for lb_id in result:
            try:
                self.amphora.delete_config(endpoint, lb_id)
            except KeramosError as error:
                # The replacement is deleted next, and the configuration with it.
                LOG.warning("replacement %s keeps %s until deleted: %s", replacement_id, lb_id, error)
            swap_member(self.state_store, lb_id, leaving=replacement_id, joining=amphora_id)


class RetireFailedAmphora(task.Task):
    """Delete the old amphora once its replacement is READY: instance first, then port and
    certificates, and mark it DELETED.

    Nothing to undo: it is the failover's last task. If the instance cannot be deleted, nothing
    of the old amphora has changed when the failover reverts.
    """

    def __init__(
        self,
        resources: amphora_tasks.DeleteAmphoraResources,
        mark_deleted: amphora_tasks.MarkAmphoraDeleted,
    ) -> None:
        super().__init__(name="retire_failed_amphora")
        self.resources = resources
        self.mark_deleted = mark_deleted

    def execute(self, amphora_id: str, failed_amphora: dict[str, Any]) -> None:
        self.resources.execute(failed_amphora)
        self.mark_deleted.execute(amphora_id)


class LeaveLoadBalancers(task.Task):
    """Remove an amphora being deleted from the members of its load balancers; put it back on
    revert."""

    def __init__(self, state_store: StateStore) -> None:
        super().__init__(name="leave_loadbalancers", provides="left_loadbalancers")
        self.state_store = state_store

    def execute(self, amphora_id: str) -> list[str]:
        lb_ids = [
            record.lb_id
            for record in self.state_store.find(LoadBalancerRecord)
            if amphora_id in _member_ids(record)
        ]
        for lb_id in lb_ids:
            swap_member(self.state_store, lb_id, leaving=amphora_id, joining=None)
        return lb_ids

    def revert(self, amphora_id: str, result: Any, **kwargs: Any) -> None:
        if isinstance(result, list):
            for lb_id in result:
                swap_member(self.state_store, lb_id, leaving=None, joining=amphora_id)
