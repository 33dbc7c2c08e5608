"""The amphora lifecycle through a keramos-worker process over the real RabbitMQ: create with a
load balancer -> READY -> traffic -> the amphora dies -> failover_amphora cast as the health
manager casts it -> traffic flows through the replacement.

Drivers: local dual CA and store, process compute (real agents and HAProxy), rest amphora driver.
Needs RabbitMQ and haproxy: fails under CI=true when either is missing.
"""

from __future__ import annotations

import os
import signal

from keramos.framework.records import AmphoraStatus, TaskState
from tests.functional.agent_helpers import free_port, http_backend
from tests.functional.lifecycle_helpers import (
    BODY,
    LIFECYCLE_DRIVERS,
    description,
    instance_process_groups,
    lifecycle_settings,
    wait_for_traffic,
)


def test_create_traffic_kill_failover_traffic_over_rabbitmq(worker_process, tmp_path):
    settings = lifecycle_settings(str(tmp_path))
    settings["drivers"] = dict(LIFECYCLE_DRIVERS)
    settings["amphora"] = {
        "require_signed_images": False,
        "active_timeout": 60.0,
        "agent_timeout": 60.0,
    }
    worker = worker_process(settings)
    listener_port = free_port()
    with http_backend(BODY) as backend_port, worker.client() as client:
        lb = {"lb_id": "lb-rabbit", **description(listener_port, backend_port)}
        created = client.wait(
            client.cast("create_amphora", {"amphora_id": "rabbit-life-1", "image_id": "img", "lb": lb}),
            timeout=120,
        )
        assert created["state"] == TaskState.SUCCESS, worker.log()
        old = created["result"]["amphora"]
        assert old["status"] == AmphoraStatus.READY and old["activation_token_hash"] is None
        wait_for_traffic(listener_port)

        groups = instance_process_groups(old["compute_id"])
        assert groups
        for group in groups:
            os.killpg(group, signal.SIGKILL)
        failed_over = client.wait(
            client.cast("failover_amphora", {"amphora_id": "rabbit-life-1"}), timeout=120
        )
        assert failed_over["state"] == TaskState.SUCCESS, worker.log()
        new = failed_over["result"]["amphora"]
        assert new["amphora_id"].startswith("rabbit-life-1-fo-")
        assert new["status"] == AmphoraStatus.READY
        assert failed_over["result"]["moved_loadbalancers"] == ["lb-rabbit"]
        wait_for_traffic(listener_port)
        assert instance_process_groups(old["compute_id"]) == set()

        deleted = client.wait(client.cast("delete_amphora", {"amphora_id": new["amphora_id"]}), timeout=60)
        assert deleted["state"] == TaskState.SUCCESS, worker.log()
        assert instance_process_groups(new["compute_id"]) == set()
