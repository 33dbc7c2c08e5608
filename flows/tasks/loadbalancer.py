"""Tasks of the ``push_config`` flow: render, version, push in parallel, record; and the push to
one new amphora that ``create_amphora``'s initial configuration adds to them.

Versions only grow. An agent refuses a push older than what it has, so a revert cannot push the
previous version number again: it pushes the previous *configuration* under a new, higher version
(or removes the load balancer when there was no previous configuration).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from typing import Any

from oslo_log import log as logging
from taskflow import task

from keramos.flows.templates import render_haproxy_config
from keramos.framework.contracts import AmphoraDriver, AmphoraEndpoint, StateStore
from keramos.framework.errors import DriverError, KeramosError, NotFound, PayloadError
from keramos.framework.records import AmphoraRecord, LoadBalancerRecord

LOG = logging.getLogger(__name__)


def _endpoint(amphora: dict[str, Any]) -> AmphoraEndpoint:
    return AmphoraEndpoint.of(amphora["amphora_id"], amphora)


class RenderHaproxyConfig(task.Task):
    """Render the load balancer's HAProxy configuration (refuses a bad description); nothing
    without a load balancer (``lb_id`` ``None``: ``create_amphora`` without ``lb``)."""

    def __init__(self) -> None:
        super().__init__(name="render_haproxy_config", provides="haproxy_config")

    def execute(self, lb_id: str | None, listeners: list[Any], pools: list[Any]) -> str | None:
        if lb_id is None:
            return None
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
            endpoints.append(AmphoraEndpoint.of(amphora_id, record.to_dict(), "agent_port").to_dict())
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
    an amphora, and using it again for another configuration would be refused there. Without a
    load balancer (``lb_id`` ``None``) nothing is handed out: version 0.
    """

    def __init__(self, state_store: StateStore) -> None:
        super().__init__(
            name="allocate_config_version",
            provides=("config_version", "previous_config", "previous_version"),
        )
        self.state_store = state_store

    def execute(self, lb_id: str | None) -> tuple[int, str | None, int]:
        if lb_id is None:
            return 0, None, 0
        previous = self.state_store.get(LoadBalancerRecord, lb_id)
        version = _allocate_version(self.state_store, lb_id)
        if previous is None:
            return version, None, 0
        return version, previous.config, previous.running_version


class PushConfigToAmphora(task.Task):
    """Upload a configuration version to one amphora that did not run the load balancer before
    (``create_amphora``'s initial configuration) and reload HAProxy there.

    On revert the load balancer is removed from the amphora again; an amphora that cannot be
    reached keeps it until it is deleted (the creation's revert deletes it next), which is logged.
    Nothing happens without a load balancer (``lb_id`` ``None``).
    """

    def __init__(self, amphora: AmphoraDriver) -> None:
        super().__init__(name="push_config_to_amphora")
        self.amphora = amphora

    def execute(
        self,
        lb_id: str | None,
        amphora_endpoint: dict[str, Any] | None,
        haproxy_config: str | None,
        config_version: int,
    ) -> None:
        if lb_id is None or amphora_endpoint is None or haproxy_config is None:
            return
        self.amphora.upload_config(
            _endpoint(amphora_endpoint), lb_id, haproxy_config, config_version
        )

    def revert(
        self, lb_id: str | None, amphora_endpoint: dict[str, Any] | None, **kwargs: Any
    ) -> None:
        if lb_id is None or amphora_endpoint is None:
            return
        try:
            self.amphora.delete_config(_endpoint(amphora_endpoint), lb_id)
        except KeramosError as error:
            LOG.warning(
                "amphora %s keeps %s until deleted: %s", amphora_endpoint["amphora_id"], lb_id, error
            )


def _raise_failures(errors: list[BaseException]) -> None:
    """Raise the one error as it is, or several as one DriverError (retryable if all are)."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise DriverError(
            "; ".join(str(error) for error in errors),
            retryable=all(getattr(error, "retryable", False) for error in errors),
        )


class PushConfigToAmphorae(task.Task):
    """Push the configuration to every amphora of the load balancer at once.

    One task, not one task per amphora: the amphorae are known only when the flow runs (taskflow
    flows are fixed when they are built), so the pushes run in a thread pool calling the driver.
    A resumed run pushes to every amphora again, which is safe: an agent accepts the same
    version with the same content again. Once a push fails, the pushes not started yet are not
    made; one failure is raised as it is, several as one DriverError (retryable if all are).

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

    def _each(
        self, action: Callable[[dict[str, Any]], None], endpoints: list[dict[str, Any]]
    ) -> dict[str, BaseException | None]:
        """Run ``action`` on every endpoint in parallel; each amphora's error, or None."""
        outcomes: dict[str, BaseException | None] = {}
        width = max(1, min(len(endpoints), self.max_workers))
        with futures.ThreadPoolExecutor(width, thread_name_prefix=self.name) as pool:
            started = {pool.submit(action, endpoint): endpoint for endpoint in endpoints}
            for done in futures.as_completed(started):
                if done.cancelled():
                    continue
                outcomes[started[done]["amphora_id"]] = done.exception()
                if done.exception() is not None:
                    for pending in started:
                        pending.cancel()
        return outcomes

    def execute(
        self,
        lb_id: str,
        amphora_endpoints: list[dict[str, Any]],
        haproxy_config: str,
        config_version: int,
    ) -> None:
        def push(endpoint: dict[str, Any]) -> None:
            self.amphora.upload_config(_endpoint(endpoint), lb_id, haproxy_config, config_version)

        outcomes = self._each(push, amphora_endpoints)
        _raise_failures([error for error in outcomes.values() if error is not None])

    def revert(
        self,
        lb_id: str,
        amphora_endpoints: list[dict[str, Any]],
        previous_config: str | None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        restore_version = _allocate_version(self.state_store, lb_id)
        not_restored: dict[str, str] = {}

        def restore(endpoint: dict[str, Any]) -> None:
            try:
                if previous_config is None:
                    self.amphora.delete_config(_endpoint(endpoint), lb_id)
                else:
                    self.amphora.upload_config(
                        _endpoint(endpoint), lb_id, previous_config, restore_version
                    )
            except DriverError as error:
                not_restored[endpoint["amphora_id"]] = str(error)

        outcomes = self._each(restore, amphora_endpoints)
        _raise_failures([error for error in outcomes.values() if error is not None])
        running_version = restore_version if previous_config is not None else 0
        for amphora_id in outcomes:
            if amphora_id in not_restored:
                LOG.error(
                    "load balancer %s: amphora %s not restored: %s",
                    lb_id,
                    amphora_id,
                    not_restored[amphora_id],
                )
            elif self.state_store.get(AmphoraRecord, amphora_id) is not None:
                self.state_store.update(AmphoraRecord, amphora_id, config_version=running_version)
        self.state_store.update(
            LoadBalancerRecord, lb_id, running_version=running_version, config=previous_config
        )


class RecordRunningVersion(task.Task):
    """Record the version every amphora now runs, on the load balancer and on each amphora.

    Nothing to undo of its own: the push's revert records what the amphorae run afterwards.
    Without a load balancer (``lb_id`` ``None``) nothing is recorded: version 0.
    """

    def __init__(self, state_store: StateStore) -> None:
        super().__init__(name="record_running_version", provides="running_version")
        self.state_store = state_store

    def execute(
        self,
        lb_id: str | None,
        amphora_endpoints: list[dict[str, Any]],
        haproxy_config: str | None,
        config_version: int,
        listeners: list[Any],
        pools: list[Any],
    ) -> int:
        if lb_id is None:
            return 0
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
