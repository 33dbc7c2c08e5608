"""The ``push_config`` flow on the in-process worker, and the HAProxy renderer behind it."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from keramos.flows.loadbalancer import PushConfig
from keramos.flows.templates import render_haproxy_config
from keramos.framework.contracts import AmphoraEndpoint
from keramos.framework.errors import DriverError, NotFound, PayloadError
from keramos.framework.records import AmphoraRecord, LoadBalancerRecord
from keramos.framework.testing import InProcessWorker
from keramos.plugins.noop import NoopAmphora
from tests.unit.amphora_helpers import run_twice_at, task_names

AMPHORAE = ["amp-1", "amp-2"]
LB_ID = "lb-1"


def description(member_port: int = 8081, listener_port: int = 8080) -> dict[str, Any]:
    return {
        "listeners": [
            {
                "id": "web",
                "protocol": "HTTP",
                "address": "127.0.0.1",
                "port": listener_port,
                "default_pool": "backends",
            }
        ],
        "pools": [
            {
                "id": "backends",
                "protocol": "HTTP",
                "members": [{"id": "m1", "address": "127.0.0.1", "port": member_port}],
            }
        ],
    }


def payload(**overrides: Any) -> dict[str, Any]:
    return {"lb_id": LB_ID, "amphora_ids": AMPHORAE, **description(), **overrides}


class FailingAmphora(NoopAmphora):
    """A noop amphora driver whose uploads fail for one amphora from a given version on."""

    def __init__(self, conf, fail_amphora: str | None = None, fail_from: int = 1) -> None:
        super().__init__(conf)
        self.fail_amphora = fail_amphora
        self.fail_from = fail_from
        self.deleted: list[tuple[str, str]] = []
        self.uploads: list[tuple[str, int]] = []
        self._calls = threading.Lock()

    def upload_config(self, endpoint: AmphoraEndpoint, lb_id: str, config: str, version: int) -> None:
        with self._calls:
            self.uploads.append((endpoint.amphora_id, version))
        if endpoint.amphora_id == self.fail_amphora and version >= self.fail_from:
            raise DriverError(f"amphora {endpoint.amphora_id}: 503 agent busy", retryable=True)
        super().upload_config(endpoint, lb_id, config, version)

    def delete_config(self, endpoint: AmphoraEndpoint, lb_id: str) -> None:
        with self._calls:
            self.deleted.append((endpoint.amphora_id, lb_id))
        super().delete_config(endpoint, lb_id)


def start_worker(
    amphora: FailingAmphora | None = None, flow: type = PushConfig
) -> tuple[InProcessWorker, FailingAmphora]:
    holder: dict[str, FailingAmphora] = {}

    def factory(conf):
        holder["driver"] = amphora or FailingAmphora(conf)
        return holder["driver"]

    worker = InProcessWorker(flows=[flow], amphora=factory).start()
    for index, amphora_id in enumerate(AMPHORAE):
        worker.state_store.save(
            AmphoraRecord(amphora_id=amphora_id, address="127.0.0.1", agent_port=9443 + index)
        )
    return worker, holder["driver"]


@pytest.fixture
def worker_and_amphora():
    worker, amphora = start_worker()
    try:
        yield worker, amphora
    finally:
        worker.stop()


def test_push_renders_versions_and_records_on_every_amphora(worker_and_amphora):
    worker, amphora = worker_and_amphora
    assert worker.run("push_config", payload()) == {"running_version": 1}
    expected = render_haproxy_config(LB_ID, description()["listeners"], description()["pools"])
    for amphora_id in AMPHORAE:
        assert amphora.configs[(amphora_id, LB_ID)] == (1, expected)
        assert worker.state_store.get(AmphoraRecord, amphora_id).config_version == 1
    record = worker.state_store.get(LoadBalancerRecord, LB_ID)
    assert (record.config_version, record.running_version, record.config) == (1, 1, expected)
    assert record.description["amphora_ids"] == list(AMPHORAE)
    assert worker.run("push_config", payload(**description(member_port=9000))) == {
        "running_version": 2
    }
    assert "127.0.0.1:9000" in amphora.configs[("amp-1", LB_ID)][1]


def test_a_failed_push_restores_the_previous_config_under_a_newer_version(worker_and_amphora):
    worker, amphora = worker_and_amphora
    worker.run("push_config", payload())
    previous = amphora.configs[("amp-1", LB_ID)][1]
    amphora.fail_amphora, amphora.fail_from = "amp-2", 2
    with pytest.raises(DriverError, match="agent busy"):
        worker.run("push_config", payload(**description(member_port=9000)))
    # amp-1 took version 2, then got version 1's configuration back as version 3.
    assert amphora.configs[("amp-1", LB_ID)] == (3, previous)
    assert ("amp-1", 2) in amphora.uploads
    assert amphora.configs[("amp-2", LB_ID)] == (1, previous)
    record = worker.state_store.get(LoadBalancerRecord, LB_ID)
    assert (record.config_version, record.running_version, record.config) == (3, 3, previous)
    assert worker.state_store.get(AmphoraRecord, "amp-1").config_version == 3
    assert worker.state_store.get(AmphoraRecord, "amp-2").config_version == 1


def test_a_failed_first_push_leaves_no_configuration_behind(worker_and_amphora):
    worker, amphora = worker_and_amphora
    amphora.fail_amphora = "amp-1"
    with pytest.raises(DriverError):
        worker.run("push_config", payload())
    assert amphora.configs == {}
    assert sorted(amphora.deleted) == [("amp-1", LB_ID), ("amp-2", LB_ID)]
    record = worker.state_store.get(LoadBalancerRecord, LB_ID)
    assert (record.running_version, record.config) == (0, None)
    # The burnt versions are never handed out again.
    amphora.fail_amphora = None
    assert worker.run("push_config", payload()) == {"running_version": 3}


def test_a_bad_description_pushes_nothing_and_burns_no_version(worker_and_amphora):
    worker, amphora = worker_and_amphora
    bad = description()
    bad["listeners"][0]["default_pool"] = "missing"
    with pytest.raises(PayloadError, match="not among the pools"):
        worker.run("push_config", payload(**bad))
    assert amphora.uploads == []
    assert worker.state_store.get(LoadBalancerRecord, LB_ID) is None


@pytest.mark.parametrize("amphora_ids", [[], ["amp-1", "amp-1"], ["amp-1", {"id": "amp-2"}]])
def test_amphora_ids_must_be_distinct_strings(worker_and_amphora, amphora_ids):
    worker, amphora = worker_and_amphora
    with pytest.raises(PayloadError, match="amphora_ids"):
        worker.run("push_config", payload(amphora_ids=amphora_ids))
    assert amphora.uploads == []


def test_an_unknown_amphora_pushes_nothing(worker_and_amphora):
    worker, amphora = worker_and_amphora
    with pytest.raises(NotFound, match="amp-9"):
        worker.run("push_config", payload(amphora_ids=["amp-1", "amp-9"]))
    assert amphora.uploads == []


def test_tcp_listener_round_robin_least_conn_and_ipv6_members():
    config = render_haproxy_config(
        "lb-2",
        [{"id": "db", "protocol": "TCP", "address": "0.0.0.0", "port": 5432, "default_pool": "p"}],
        [
            {
                "id": "p",
                "protocol": "TCP",
                "algorithm": "LEAST_CONNECTIONS",
                "health_check": True,
                "members": [
                    {"id": "a", "address": "10.0.0.5", "port": 5432, "weight": 3},
                    {"id": "b", "address": "fd00::5", "port": 5432},
                ],
            }
        ],
    )
    assert "    mode tcp\n    maxconn 10000\n    bind 0.0.0.0:5432\n" in config
    assert "    balance leastconn\n" in config
    assert "    server member_a 10.0.0.5:5432 weight 3 check\n" in config
    assert "    server member_b ipv6@fd00::5:5432 weight 1 check\n" in config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["listeners"][0].update(id="web\n    bogus"), "listeners\\[0\\].id must match"),
        (lambda d: d["pools"][0]["members"][0].update(address="127.0.0.1\nbind :1"), "IP address"),
        (lambda d: d["listeners"][0].update(port=70000), "port must be an integer"),
        (lambda d: d["listeners"][0].update(protocol="UDP"), "protocol must be one of"),
        (lambda d: d["pools"][0].update(protocol="TCP"), "is HTTP but its pool"),
        (lambda d: d["pools"][0]["members"].append(dict(d["pools"][0]["members"][0])), "used twice"),
        (lambda d: d["pools"][0].update(algorithm="RANDOM"), "algorithm must be one of"),
        (lambda d: d["listeners"][0].update(extra=1), "unknown field"),
        (lambda d: d["pools"][0]["members"][0].update(weight=True), "weight must be an integer"),
    ],
)
def test_renderer_refuses_what_could_break_or_inject_into_the_config(change, message):
    bad = description()
    change(bad)
    with pytest.raises(PayloadError, match=message):
        render_haproxy_config(LB_ID, bad["listeners"], bad["pools"])


PUSH_TASKS = [
    "render_haproxy_config",
    "load_amphora_endpoints",
    "allocate_config_version",
    "push_config_to_amphorae",
    "record_running_version",
]


@pytest.mark.parametrize("task_name", PUSH_TASKS)
def test_every_push_task_run_again_after_its_worker_died_leaves_every_amphora_on_one_version(task_name):
    again = run_twice_at(PushConfig, task_name)
    worker, amphora = start_worker(flow=again)
    try:
        assert task_names(worker, "push_config") == PUSH_TASKS
        running = worker.run(again.name, payload())["running_version"]
        expected = render_haproxy_config(LB_ID, description()["listeners"], description()["pools"])
        assert {amphora.configs[(amphora_id, LB_ID)] for amphora_id in AMPHORAE} == {(running, expected)}
        assert worker.state_store.get(LoadBalancerRecord, LB_ID).running_version == running
    finally:
        worker.stop()
