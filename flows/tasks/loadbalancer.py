"""Tasks of the ``push_config`` flow: render, version, push in parallel, record.

Versions only grow. An agent refuses a push older than what it has, so a revert cannot push the
previous version number again: it pushes the previous *configuration* under a new, higher version
(or removes the load balancer when there was no previous configuration).
"""

from __future__ import annotations

from typing import Any

from oslo_log import log as logging
from taskflow import engines, task
from taskflow import exceptions as tf_exceptions
from taskflow.patterns import unordered_flow

from keramos.flows.templates import render_haproxy_config
from keramos.framework.contracts import AmphoraDriver, AmphoraEndpoint, StateStore
from keramos.framework.errors import DriverError, NotFound, PayloadError
from keramos.framework.records import AmphoraRecord, LoadBalancerRecord

LOG = logging.getLogger(__name__)


def _endpoint(amphora: dict[str, Any]) -> AmphoraEndpoint:
    return AmphoraEndpoint(amphora["amphora_id"], amphora["address"], amphora["port"])


class RenderHaproxyConfig(task.Task):
    """Render the load balancer's HAProxy configuration (refuses a bad description)."""

    def __init__(self) -> None:
        super().__init__(name="render_haproxy_config", provides="haproxy_config")

    def execute(self, lb_id: str, listeners: list[Any], pools: list[Any]) -> str:
        return render_haproxy_config(lb_id, listeners, pools)


class LoadAmphoraEndpoints(task.Task):
    """Look up where the agents of the load balancer's amphorae answer."""

    def __init__(self, state_store: StateStore) -> None:
        super().__init__(name="load_amphora_endpoints", provides="amphora_endpoints")
        self.state_store = state_store

    def execute(self, amphora_ids: list[str]) -> list[dict[str, Any]]:
        if not all(isinstance(amphora_id, str) for amphora_id in amphora_ids):
            raise PayloadError("amphora_ids must be a list of amphora ids (strings)")
        if not amphora_ids or len(set(amphora_ids)) != len(amphora_ids):
            raise PayloadError("amphora_ids must list each amphora of the load balancer once")
        endpoints = []
        for amphora_id in amphora_ids:
            record = self.state_store.get(AmphoraRecord, amphora_id)
            if record is None or not record.address:
                raise NotFound(f"no amphora {amphora_id} with an address")
            endpoints.append(
                {"amphora_id": amphora_id, "address": record.address, "port": record.agent_port}
            )
        return endpoints


def _allocate_version(state_store: StateStore, lb_id: str) -> int:
    record = state_store.get(LoadBalancerRecord, lb_id)
    if record is None:
        record = state_store.save(LoadBalancerRecord(lb_id=lb_id))
    return state_store.update(
        LoadBalancerRecord, lb_id, config_version=record.config_version + 1
    ).config_version


class AllocateConfigVersion(task.Task):
    """Hand out the next configuration version and remember what ran before.

    The allocation is not undone on revert on purpose: a version number may already have reached
    an amphora, and using it again for another configuration would be refused there.
    """

    def __init__(self, state_store: StateStore) -> None:
        super().__init__(
            name="allocate_config_version",
            provides=("config_version", "previous_config", "previous_version"),
        )
        self.state_store = state_store

    def execute(self, lb_id: str) -> tuple[int, str | None, int]:
        previous = self.state_store.get(LoadBalancerRecord, lb_id)
        version = _allocate_version(self.state_store, lb_id)
        if previous is None:
            return version, None, 0
        return version, previous.config, previous.running_version


class PushConfigToAmphora(task.Task):
    """Upload one configuration version to one amphora and reload HAProxy there."""

    def __init__(self, amphora: AmphoraDriver, endpoint: dict[str, Any]) -> None:
        super().__init__(name=f"push_config_to_{endpoint['amphora_id']}")
        self.amphora = amphora
        self.endpoint = endpoint

    def execute(self, lb_id: str, haproxy_config: str, config_version: int) -> None:
        self.amphora.upload_config(_endpoint(self.endpoint), lb_id, haproxy_config, config_version)


class PushConfigToAmphorae(task.Task):
    """Push the configuration to every amphora at once (a taskflow unordered flow).

    On revert, whether this push failed on some amphora or a later task failed, every amphora is
    brought back to the previous configuration under a new version, or loses the load balancer
    when it had none before. An amphora that cannot be restored is logged and recorded with the
    version it is known to run, and the other amphorae are still restored.
    """

    def __init__(self, amphora: AmphoraDriver, state_store: StateStore, max_workers: int = 16) -> None:
        super().__init__(name="push_config_to_amphorae")
        self.amphora = amphora
        self.state_store = state_store
        self.max_workers = max_workers

    def _run_parallel(self, flow: unordered_flow.Flow, store: dict[str, Any], width: int) -> None:
        try:
            engines.run(
                flow, store=store, engine="parallel", max_workers=max(1, min(width, self.max_workers))
            )
        except tf_exceptions.WrappedFailure as failures:
            errors = [fail.exception for fail in failures]
            raise DriverError(
                "; ".join(str(error) for error in errors),
                retryable=all(getattr(error, "retryable", False) for error in errors),
            ) from None

    def execute(
        self,
        lb_id: str,
        amphora_endpoints: list[dict[str, Any]],
        haproxy_config: str,
        config_version: int,
    ) -> None:
        flow = unordered_flow.Flow(f"push_{lb_id}_v{config_version}")
        flow.add(*(PushConfigToAmphora(self.amphora, endpoint) for endpoint in amphora_endpoints))
        store = {"lb_id": lb_id, "haproxy_config": haproxy_config, "config_version": config_version}
        self._run_parallel(flow, store, len(amphora_endpoints))

    def revert(
        self,
        lb_id: str,
        amphora_endpoints: list[dict[str, Any]],
        previous_config: str | None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        restore_version = _allocate_version(self.state_store, lb_id)
        outcomes: dict[str, str | None] = {}
        flow = unordered_flow.Flow(f"restore_{lb_id}_v{restore_version}")
        flow.add(
            *(
                RestoreAmphora(self.amphora, endpoint, outcomes)
                for endpoint in amphora_endpoints
            )
        )
        store = {
            "lb_id": lb_id,
            "previous_config": previous_config,
            "restore_version": restore_version,
        }
        self._run_parallel(flow, store, len(amphora_endpoints))
        running_version = restore_version if previous_config is not None else 0
        for amphora_id, error in outcomes.items():
            if error is not None:
                LOG.error("load balancer %s: amphora %s not restored: %s", lb_id, amphora_id, error)
            elif self.state_store.get(AmphoraRecord, amphora_id) is not None:
                self.state_store.update(AmphoraRecord, amphora_id, config_version=running_version)
        self.state_store.update(
            LoadBalancerRecord, lb_id, running_version=running_version, config=previous_config
        )


class RestoreAmphora(task.Task):
    """Put the previous configuration back on one amphora; report, never raise."""

    def __init__(
        self, amphora: AmphoraDriver, endpoint: dict[str, Any], outcomes: dict[str, str | None]
    ) -> None:
        super().__init__(name=f"restore_{endpoint['amphora_id']}")
        self.amphora = amphora
        self.endpoint = endpoint
        self.outcomes = outcomes

    def execute(self, lb_id: str, previous_config: str | None, restore_version: int) -> None:
        endpoint = _endpoint(self.endpoint)
        try:
            if previous_config is None:
                self.amphora.delete_config(endpoint, lb_id)
            else:
                self.amphora.upload_config(endpoint, lb_id, previous_config, restore_version)
        except DriverError as error:
            self.outcomes[endpoint.amphora_id] = str(error)
        else:
            self.outcomes[endpoint.amphora_id] = None


class RecordRunningVersion(task.Task):
    """Record the version every amphora now runs, on the load balancer and on each amphora.

    Nothing to undo of its own: the push's revert records what the amphorae run afterwards.
    """

    def __init__(self, state_store: StateStore) -> None:
        super().__init__(name="record_running_version", provides="running_version")
        self.state_store = state_store

    def execute(
        self,
        lb_id: str,
        amphora_endpoints: list[dict[str, Any]],
        haproxy_config: str,
        config_version: int,
        listeners: list[Any],
        pools: list[Any],
    ) -> int:
        for endpoint in amphora_endpoints:
            self.state_store.update(
                AmphoraRecord, endpoint["amphora_id"], config_version=config_version
            )
        self.state_store.update(
            LoadBalancerRecord,
            lb_id,
            running_version=config_version,
            config=haproxy_config,
            description={
                "listeners": listeners,
                "pools": pools,
                "amphora_ids": [endpoint["amphora_id"] for endpoint in amphora_endpoints],
            },
        )
        return config_version
