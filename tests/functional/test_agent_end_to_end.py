"""End to end on real processes: the process driver boots agents, the controller pushes a
configuration through the ``push_config`` flow and the rest driver over mutual TLS, each agent
checks it with the real ``haproxy -c`` and reloads, and HAProxy serves traffic on loopback to a
backend this test runs.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from keramos.flows.loadbalancer import PushConfig
from keramos.framework.contracts import AmphoraEndpoint, InstanceStatus
from keramos.framework.errors import DriverError, NotFound
from keramos.framework.records import AmphoraRecord, LoadBalancerRecord
from keramos.framework.testing import InProcessWorker
from keramos.plugins.amphora_rest import AgentError
from tests.functional.agent_helpers import Pki, boot, free_port, http_backend, make_drivers, make_pki

LB_ID = "lb-e2e"
AMPHORAE = ("amp-e2e-1", "amp-e2e-2")


class Deployment:
    """Two amphorae booted by the process driver, a worker serving push_config, a backend."""

    def __init__(self, directory: str) -> None:
        self.pki: Pki = make_pki(directory)
        self.compute, self.rest = make_drivers(directory, self.pki)
        self.endpoints: dict[str, AmphoraEndpoint] = {}
        self.compute_ids: dict[str, str] = {}
        self.worker: InProcessWorker | None = None
        self.listener_port = free_port()

    def start(self) -> None:
        for amphora_id in AMPHORAE:
            self.compute_ids[amphora_id], self.endpoints[amphora_id] = boot(
                self.compute, self.pki, amphora_id
            )
        for endpoint in self.endpoints.values():
            self.rest.wait_until_reachable(endpoint, 30)
        self.worker = InProcessWorker(flows=[PushConfig], amphora=self.rest).start()
        for amphora_id, endpoint in self.endpoints.items():
            self.worker.state_store.save(
                AmphoraRecord(amphora_id=amphora_id, address=endpoint.address, agent_port=endpoint.port)
            )

    def push(self, backend_port: int) -> dict[str, Any]:
        """Run push_config for one HTTP listener in front of ``backend_port``."""
        assert self.worker is not None
        return self.worker.run(
            "push_config",
            {
                "lb_id": LB_ID,
                "amphora_ids": list(AMPHORAE),
                "listeners": [
                    {
                        "id": "web",
                        "protocol": "HTTP",
                        "address": "127.0.0.1",
                        "port": self.listener_port,
                        "default_pool": "app",
                    }
                ],
                "pools": [
                    {
                        "id": "app",
                        "protocol": "HTTP",
                        "health_check": False,
                        "members": [{"id": "app-1", "address": "127.0.0.1", "port": backend_port}],
                    }
                ],
            },
        )

    def get_through_haproxy(self) -> bytes:
        """GET / through the load balancer's listener."""
        response = requests.get(f"http://127.0.0.1:{self.listener_port}/", timeout=5)
        assert response.status_code == 200
        return response.content

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        self.rest.close()
        self.compute.close()


@pytest.fixture
def deployment(tmp_path) -> Iterator[Deployment]:
    deployed = Deployment(str(tmp_path))
    try:
        deployed.start()
        yield deployed
    finally:
        deployed.stop()


def wait_for_body(deployed: Deployment, body: bytes, timeout: float = 10.0) -> None:
    """Wait until requests through HAProxy answer ``body`` (old processes drain after a reload)."""
    deadline = time.monotonic() + timeout
    while True:
        answers = {deployed.get_through_haproxy() for _ in range(4)}
        if answers == {body}:
            return
        assert time.monotonic() < deadline, f"still answering {answers}"
        time.sleep(0.1)


def port_refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def test_pushed_config_serves_traffic_and_is_versioned(deployment):
    with http_backend(b"first backend\n") as first, http_backend(b"second backend\n") as second:
        assert deployment.push(first) == {"running_version": 1}
        wait_for_body(deployment, b"first backend\n")
        for amphora_id, endpoint in deployment.endpoints.items():
            info = deployment.rest.get_info(endpoint)
            assert info["loadbalancers"][LB_ID] == {
                "config_version": 1,
                "running_version": 1,
                "running": True,
            }
            assert deployment.worker.state_store.get(AmphoraRecord, amphora_id).config_version == 1

        endpoint = deployment.endpoints[AMPHORAE[0]]
        stored, version = deployment.rest.get_config(endpoint, LB_ID)
        assert version == 1 and f":{first} " in stored

        # A configuration HAProxy refuses is answered 400 with its output; the old one keeps serving.
        with pytest.raises(AgentError) as refused:
            deployment.rest.upload_config(endpoint, LB_ID, stored + "    bogus_keyword\n", 2)
        assert refused.value.status == 400 and not refused.value.retryable
        assert "bogus_keyword" in refused.value.details
        assert deployment.get_through_haproxy() == b"first backend\n"
        assert deployment.rest.get_config(endpoint, LB_ID) == (stored, 1)

        # A stale push (a delayed retry of an older version) cannot roll an amphora back.
        with pytest.raises(AgentError) as stale:
            deployment.rest.upload_config(endpoint, LB_ID, stored.replace("app-1", "old"), 1)
        assert stale.value.status == 409

        assert deployment.push(second) == {"running_version": 2}
        wait_for_body(deployment, b"second backend\n")

        for endpoint in deployment.endpoints.values():
            assert "stopped" in deployment.rest.action(endpoint, LB_ID, "stop")
        assert port_refuses(deployment.listener_port)
        for endpoint in deployment.endpoints.values():
            assert "started" in deployment.rest.action(endpoint, LB_ID, "start")
            assert "already running" in deployment.rest.action(endpoint, LB_ID, "start")
        wait_for_body(deployment, b"second backend\n")
        record = deployment.worker.state_store.get(LoadBalancerRecord, LB_ID)
        assert record.running_version == 2 and f":{second} " in record.config


def test_a_push_failing_on_one_amphora_restores_the_previous_config(deployment):
    with http_backend(b"first backend\n") as first, http_backend(b"second backend\n") as second:
        deployment.push(first)
        wait_for_body(deployment, b"first backend\n")
        deployment.compute.delete(deployment.compute_ids[AMPHORAE[1]])
        with pytest.raises(DriverError, match=AMPHORAE[1]):
            deployment.push(second)
        survivor = deployment.endpoints[AMPHORAE[0]]
        info = deployment.rest.get_info(survivor)["loadbalancers"][LB_ID]
        # Version 2 reached the survivor, then version 1's configuration came back as version 3.
        assert info == {"config_version": 3, "running_version": 3, "running": True}
        wait_for_body(deployment, b"first backend\n")
        record = deployment.worker.state_store.get(LoadBalancerRecord, LB_ID)
        assert (record.config_version, record.running_version) == (3, 3)
        assert f":{first} " in record.config


def test_deleting_an_amphora_stops_its_agent_and_haproxy_and_removes_its_files(deployment):
    with http_backend() as backend:
        deployment.push(backend)
        deployment.get_through_haproxy()
    for amphora_id in AMPHORAE:
        compute_id = deployment.compute_ids[amphora_id]
        directory = os.path.join(deployment.compute.instances_dir, compute_id)
        assert os.path.isdir(directory)
        deployment.compute.delete(compute_id)
        assert not os.path.exists(directory)
        assert port_refuses(deployment.endpoints[amphora_id].port)
        with pytest.raises(NotFound):
            deployment.compute.get(compute_id)
        deployment.compute.delete(compute_id)
    assert port_refuses(deployment.listener_port)


def test_config_drive_keys_are_private_and_a_dead_agent_is_reported_error(deployment):
    compute_id = deployment.compute_ids[AMPHORAE[0]]
    directory = os.path.join(deployment.compute.instances_dir, compute_id)
    assert os.stat(directory).st_mode & 0o777 == 0o700
    for name in os.listdir(directory):
        if name.endswith(".pem") or name.endswith(".conf"):
            assert os.stat(os.path.join(directory, name)).st_mode & 0o777 == 0o600, name
    assert deployment.compute.get(compute_id).status == InstanceStatus.ACTIVE
    os.killpg(deployment.compute.agent_pid(compute_id), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (instance := deployment.compute.get(compute_id)).status != InstanceStatus.ERROR:
        assert time.monotonic() < deadline, instance
        time.sleep(0.05)
    assert "exited with status" in instance.fault


def test_a_config_drive_without_a_client_ca_boots_nothing(tmp_path):
    pki = make_pki(str(tmp_path))
    compute, rest = make_drivers(str(tmp_path), pki)
    try:
        drive = pki.config_drive("amp-broken")
        del drive["client_ca_cert.pem"]
        with pytest.raises(DriverError, match="client_ca"):
            compute.build("amp-broken", "image", drive)
        assert os.listdir(compute.instances_dir) == []
    finally:
        rest.close()
        compute.close()
