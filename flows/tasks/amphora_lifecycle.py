"""Tasks that tie the amphora lifecycle to the other flows: the choice between verifying the
amphora's image and booting it unverified, the steps of its initial load balancer configuration
that ``push_config`` does not have, and what a failover moves to the replacement.

Choices are data, not taskflow deciders: a decider's skipped branch is saved one atom at a time,
and a worker killed in between resumes a half-skipped branch. Here a check task provides the
choice (``image_signed``; ``lb_id``, ``None`` without a load balancer) and every task of both
branches runs, doing nothing when the choice is not its.

Load balancer membership is kept in ``LoadBalancerRecord.description["amphora_ids"]``, written
here when a configuration is pushed at creation and moved on failover.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import uuid
from typing import Any

from oslo_log import log as logging
from taskflow import task
from taskflow.types import failure

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
    return AmphoraEndpoint.of(amphora_id, instance).to_dict()


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


class CheckAmphoraImage(task.Task):
    """Decide whether the amphora's image is verified: provides ``image_signed``.

    An image whose properties carry no signature at all boots unverified only when
    ``require_signed`` is False (the verification tasks then do nothing); otherwise it fails
    the flow with :class:`SignatureVerificationError` before anything boots. An image carrying
    any signature property is verified, and refused if its signature is incomplete.
    """

    def __init__(self, image_store: ImageStore, *, require_signed: bool) -> None:
        super().__init__(name="check_amphora_image", provides="image_signed")
        self.image_store = image_store
        self.require_signed = require_signed

    def execute(self, image_id: str) -> bool:
        properties = self.image_store.properties(image_id)
        if any(name in properties for name in REQUIRED_PROPERTIES):
            return True
        if self.require_signed:
            raise SignatureVerificationError(
                Reason.MISSING_PROPERTY,
                f"image {image_id} is not signed and [amphora] require_signed_images is set",
            )
        LOG.warning("image %s is not signed; booting it unverified as configured", image_id)
        return False


class UseAmphoraImage(task.Task):
    """Provide ``amphora_image``: the verified ``image`` marked ``verified``, or, for an unsigned
    image allowed to boot unverified (``image_signed`` False), the image id marked unverified.

    Nothing to undo: a verified image stays in the cache when a later task fails.
    """

    def __init__(self) -> None:
        super().__init__(name="use_amphora_image", provides="amphora_image")

    def execute(
        self, image_id: str, image_signed: bool, image: dict[str, Any] | None
    ) -> dict[str, Any]:
        if not image_signed or image is None:
            return {"image_id": image_id, "verified": False}
        return {**image, "verified": True}


class CheckInitialConfig(task.Task):
    """Check the payload's ``lb`` before anything boots and hand its parts to the config push.

    ``lb`` is ``{"lb_id", "listeners", "pools"}`` as in ``push_config``, or ``None`` (nothing is
    pushed: ``lb_id`` is then ``None``). Provides ``lb_id``, ``listeners`` and ``pools``.
    """

    default_provides = ("lb_id", "listeners", "pools")

    def __init__(self) -> None:
        super().__init__(name="check_initial_config")

    def execute(self, lb: dict[str, Any] | None) -> tuple[str | None, list[Any], list[Any]]:
        if lb is None:
            return None, [], []
        missing = sorted({"lb_id", "listeners", "pools"} - set(lb))
        if missing:
            raise PayloadError(f"lb lacks {', '.join(missing)}")
        return lb["lb_id"], lb["listeners"], lb["pools"]


class PlanInitialConfig(task.Task):
    """Where the initial configuration goes: provides ``amphora_endpoint`` (this amphora's
    agent) and ``amphora_endpoints`` (that one endpoint, as ``push_config``'s tasks take them).

    Without a load balancer (``lb_id`` ``None``) the endpoint is ``None`` and the list empty:
    the push's tasks then do nothing.
    """

    default_provides = ("amphora_endpoint", "amphora_endpoints")

    def __init__(self) -> None:
        super().__init__(name="plan_initial_config")

    def execute(
        self, amphora_id: str, amphora_instance: dict[str, Any], lb_id: str | None
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        if lb_id is None:
            return None, []
        endpoint = _endpoint(amphora_id, amphora_instance)
        return endpoint, [endpoint]


class SnapshotLoadBalancer(task.Task):
    """Remember the load balancer's record before the initial push; put it back on revert.

    Provides ``previous_loadbalancer``: ``config``, ``running_version`` and ``description`` (the
    members among them), or ``None`` without a load balancer (``lb_id`` ``None``). The version
    handed out after it stays used on revert: versions only grow.
    """

    def __init__(self, state_store: StateStore) -> None:
        super().__init__(name="snapshot_loadbalancer", provides="previous_loadbalancer")
        self.state_store = state_store

    def execute(self, lb_id: str | None) -> dict[str, Any] | None:
        if lb_id is None:
            return None
        previous = self.state_store.get(LoadBalancerRecord, lb_id)
        if previous is None:
            return {"config": None, "running_version": 0, "description": None}
        return jsonable(
            {
                "config": previous.config,
                "running_version": previous.running_version,
                "description": previous.description,
            }
        )

    def revert(self, lb_id: str | None, result: Any, **kwargs: Any) -> None:
        if lb_id is None:
            return
        if isinstance(result, dict) and self.state_store.get(LoadBalancerRecord, lb_id) is not None:
            self.state_store.update(LoadBalancerRecord, lb_id, **result)


class JoinLoadBalancer(task.Task):
    """Record the new amphora among the load balancer's members, after those it had before.

    ``record_running_version`` rewrote the members to the endpoints it was given (this amphora
    alone): the others come from ``previous_loadbalancer``. On revert the amphora leaves.
    Nothing happens without a load balancer (``lb_id`` ``None``).
    """

    def __init__(self, state_store: StateStore) -> None:
        super().__init__(name="join_loadbalancer")
        self.state_store = state_store

    def execute(
        self, amphora_id: str, lb_id: str | None, previous_loadbalancer: dict[str, Any] | None
    ) -> None:
        if lb_id is None or previous_loadbalancer is None:
            return
        members = list((previous_loadbalancer["description"] or {}).get("amphora_ids", []))
        swap_member(self.state_store, lb_id, leaving=None, joining=amphora_id, members=members)

    def revert(self, amphora_id: str, lb_id: str | None, result: Any, **kwargs: Any) -> None:
        if lb_id is not None and not isinstance(result, failure.Failure):
            swap_member(self.state_store, lb_id, leaving=amphora_id, joining=None)


class LoadFailedAmphora(task.Task):
    """Claim the amphora to fail over and name its replacement.

    The amphora turns PENDING_FAILOVER from READY or ERROR in one compare-and-set that also
    records the failover's request id, so that of two failovers cast for it (two health
    managers, an operator and a health manager) one runs and the other is refused before it
    boots anything. On revert it gets its status back.

    Run again after its worker died once the claim was made, it finds the amphora claimed by its
    own request id and goes on. The status the amphora had before is lost with the first run's
    result: a revert then leaves it ERROR, from which it can be failed over again.
    """

    default_provides = ("failed_amphora", "replacement_id", "image_id", "network_id")
    _FAILABLE = (AmphoraStatus.READY, AmphoraStatus.ERROR)

    def __init__(self, state_store: StateStore) -> None:
        super().__init__(name="load_failed_amphora")
        self.state_store = state_store

    def execute(
        self, amphora_id: str, request_id: str | None = None
    ) -> tuple[dict[str, Any], str, str, str | None]:
        record = self.state_store.get(AmphoraRecord, amphora_id)
        if record is None or record.status in (AmphoraStatus.DELETED, AmphoraStatus.PENDING_DELETE):
            raise NotFound(f"no amphora {amphora_id} to fail over")
        if not record.image_id:
            raise KeramosError(f"amphora {amphora_id} has no image on record to boot again")
        claimed_before = (
            request_id is not None
            and record.status == AmphoraStatus.PENDING_FAILOVER
            and record.request_id == request_id
        )
        if claimed_before:
            LOG.info("amphora %s was claimed for failover by %s before its worker died; going on",
                     amphora_id, request_id)
            record = dataclasses.replace(record, status=AmphoraStatus.ERROR)
        else:
            try:
                self.state_store.update_if(
                    AmphoraRecord,
                    amphora_id,
                    {"status": self._FAILABLE},
                    status=AmphoraStatus.PENDING_FAILOVER,
                    request_id=request_id,
                )
            except Conflict as error:
                raise Conflict(f"amphora {amphora_id} is not failed over: {error}") from None
        # The replacement serves the same network, reached through the same kind of route.
        return (
            jsonable(record.to_dict()),
            replacement_id_for(amphora_id),
            record.image_id,
            record.network_id,
        )

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
        endpoint = AmphoraEndpoint.of(failed_amphora["amphora_id"], failed_amphora, "agent_port")
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
        # The replacement is a member already if this task ran before its worker died.
        records = [
            record
            for record in self.state_store.find(LoadBalancerRecord)
            if record.config is not None
            and (
                {amphora_id, replacement_id} & set(_member_ids(record))
                or record.lb_id in reported
            )
        ]
        endpoint = AmphoraEndpoint.of(replacement_id, amphora_instance)
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
        endpoint = AmphoraEndpoint.of(replacement_id, amphora_instance)
        for lb_id in result:
            try:
                self.amphora.delete_config(endpoint, lb_id)
            except KeramosError as error:
                # The replacement is deleted next, and the configuration with it.
                LOG.warning("replacement %s keeps %s until deleted: %s", replacement_id, lb_id, error)
            swap_member(self.state_store, lb_id, leaving=replacement_id, joining=amphora_id)


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
