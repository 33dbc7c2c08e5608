"""The amphora lifecycle on real agents: create -> READY -> config -> traffic -> failover -> traffic.

Amphorae run as agent processes (``process`` compute driver) reached over mutual TLS (``rest``
amphora driver) with certificates from the ``local`` dual CA, in an in-process worker. Needs
haproxy: fails under CI=true when it is missing.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from keramos.framework.contracts import AmphoraEndpoint
from keramos.framework.errors import KeramosError
from keramos.framework.records import AmphoraRecord, AmphoraStatus, CertificateRecord
from keramos.framework.testing import InProcessWorker
from tests.functional.agent_helpers import free_port, http_backend, require_haproxy
from tests.functional.lifecycle_helpers import BODY, description, lifecycle_worker, wait_for_traffic


@pytest.fixture
def worker(tmp_path) -> Iterator[InProcessWorker]:
    """An in-process worker on real agents; every agent it started is stopped afterwards."""
    with lifecycle_worker(tmp_path) as made:
        yield made


def agent_alive(worker: InProcessWorker, compute_id: str) -> bool:
    return worker.drivers.compute.get(compute_id).status == "ACTIVE"


def assert_replaced(worker: InProcessWorker, old: AmphoraRecord, new: dict[str, Any]) -> None:
    assert new["status"] == AmphoraStatus.READY and new["amphora_id"].startswith(f"{old.amphora_id}-fo-")
    retired = worker.state_store.get(AmphoraRecord, old.amphora_id)
    assert retired.status == AmphoraStatus.DELETED
    assert worker.state_store.find(CertificateRecord, amphora_id=old.amphora_id) == []
    assert not os.path.exists(os.path.join(worker.drivers.compute.instances_dir, old.compute_id))
    assert worker.state_store.get(AmphoraRecord, new["amphora_id"]).activation_token_hash is None


def test_create_push_traffic_failover_traffic_with_the_old_agent_still_answering(worker):
    listener_port = free_port()
    with http_backend(BODY) as backend_port:
        created = worker.run("create_amphora", {"amphora_id": "life-1", "image_id": "image-1"})
        assert created["amphora"]["status"] == AmphoraStatus.READY
        assert created["amphora"]["activation_token_hash"] is None
        worker.run(
            "push_config",
            {"lb_id": "lb-life", "amphora_ids": ["life-1"], **description(listener_port, backend_port)},
        )
        wait_for_traffic(listener_port)
        old = worker.state_store.get(AmphoraRecord, "life-1")
        result = worker.run("failover_amphora", {"amphora_id": "life-1"})
        assert result["moved_loadbalancers"] == ["lb-life"]
        assert_replaced(worker, old, result["amphora"])
        wait_for_traffic(listener_port)
        new = result["amphora"]
        info = worker.drivers.amphora.get_info(
            AmphoraEndpoint(new["amphora_id"], new["address"], new["agent_port"])
        )
        assert info["loadbalancers"]["lb-life"]["running"] is True


def test_a_killed_amphora_is_replaced_from_the_recorded_membership_and_traffic_returns(worker):
    listener_port = free_port()
    with http_backend(BODY) as backend_port:
        lb = {"lb_id": "lb-kill", **description(listener_port, backend_port)}
        worker.run("create_amphora", {"amphora_id": "life-2", "image_id": "image-1", "lb": lb})
        wait_for_traffic(listener_port)
        old = worker.state_store.get(AmphoraRecord, "life-2")
        os.killpg(worker.drivers.compute.agent_pid(old.compute_id), signal.SIGKILL)
        result = worker.run("failover_amphora", {"amphora_id": "life-2"})
        assert result["moved_loadbalancers"] == ["lb-kill"]
        assert_replaced(worker, old, result["amphora"])
        wait_for_traffic(listener_port)


def test_a_failover_whose_replacement_cannot_run_haproxy_keeps_the_old_amphora_serving(worker):
    listener_port = free_port()
    with http_backend(BODY) as backend_port:
        lb = {"lb_id": "lb-keep", **description(listener_port, backend_port)}
        worker.run("create_amphora", {"amphora_id": "life-3", "image_id": "image-1", "lb": lb})
        old = worker.state_store.get(AmphoraRecord, "life-3")
        instances = set(os.listdir(worker.drivers.compute.instances_dir))
        worker.drivers.compute.haproxy_binary = "/nonexistent/haproxy"
        try:
            with pytest.raises(KeramosError):
                worker.run("failover_amphora", {"amphora_id": "life-3"})
        finally:
            worker.drivers.compute.haproxy_binary = require_haproxy()
        assert set(os.listdir(worker.drivers.compute.instances_dir)) == instances
        now = worker.state_store.get(AmphoraRecord, "life-3")
        assert (now.status, now.compute_id) == (AmphoraStatus.READY, old.compute_id)
        assert agent_alive(worker, old.compute_id)
        wait_for_traffic(listener_port)
