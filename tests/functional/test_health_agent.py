"""Heartbeats from a real agent: the process compute driver boots ``keramos-agent`` with heartbeat
options on its config drive, and the health manager's listener in this test receives, verifies
and records them; a pushed configuration shows in them, a lagging one is pushed again, and a
killed agent is failed over.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from keramos.flows.templates import render_haproxy_config
from keramos.framework.agent_protocol.heartbeat import HeartbeatVerifier
from keramos.framework.config import make_conf
from keramos.framework.contracts import AmphoraEndpoint, InstanceStatus
from keramos.framework.records import AmphoraRecord, AmphoraStatus, LoadBalancerRecord, utcnow
from keramos.plugins.health.checks import FailoverThreshold, HealthChecker, HeartbeatRecorder
from keramos.plugins.health.manager import HeartbeatListener
from keramos.plugins.state_store.memory import MemoryStateStore
from tests.functional.agent_helpers import free_port, make_drivers, make_pki
from tests.unit.health_helpers import CastRecorder, wait_for

KEY = "functional-heartbeat-key"
AMPHORA_ID = "amp-health-1"
LB_ID = "lb-health"


@pytest.fixture
def listener() -> Iterator[HeartbeatListener]:
    store = MemoryStateStore(make_conf(config_files=[]))
    store.save(AmphoraRecord(AMPHORA_ID, status=AmphoraStatus.READY))
    verifier = HeartbeatVerifier(KEY, replay_window=30)
    running = HeartbeatListener.bind("127.0.0.1", 0, verifier, HeartbeatRecorder(store))
    thread = threading.Thread(target=running.serve, daemon=True)
    thread.start()
    yield running
    running.stop()
    thread.join(5)


def test_a_real_agent_heartbeats_reports_its_versions_and_is_failed_over_when_killed(tmp_path, listener):
    pki = make_pki(str(tmp_path))
    compute, rest = make_drivers(str(tmp_path), pki)
    recorder = listener.recorder
    store = recorder.state_store
    host, port = listener.address
    agent_conf = (
        "[amphora_agent]\n"
        f"controller_heartbeat_endpoints = {host}:{port}\n"
        f"heartbeat_key = {KEY}\n"
        "heartbeat_interval = 0.1\n"
    ).encode()
    try:
        drive = {**pki.config_drive(AMPHORA_ID), "amphora_agent.conf": agent_conf}
        compute_id = compute.build(AMPHORA_ID, "image", drive)
        instance = wait_for(
            lambda: (got := compute.get(compute_id)).status == InstanceStatus.ACTIVE and got,
            what="agent ACTIVE",
        )
        first = wait_for(lambda: store.get(AmphoraRecord, AMPHORA_ID).last_heartbeat_at, what="a heartbeat")
        assert recorder.reports(0)[0].heartbeat.config_versions == {}

        endpoint = AmphoraEndpoint(AMPHORA_ID, instance.address, instance.port)
        rest.wait_until_reachable(endpoint, 30)
        listeners = [{"id": "web", "protocol": "TCP", "address": "127.0.0.1", "port": free_port(),
                      "default_pool": "app"}]
        pools = [{"id": "app", "protocol": "TCP", "health_check": False,
                  "members": [{"id": "m1", "address": "127.0.0.1", "port": free_port()}]}]
        rest.upload_config(endpoint, LB_ID, render_haproxy_config(LB_ID, listeners, pools), 1)
        wait_for(
            lambda: recorder.reports(0)[0].heartbeat.config_versions == {LB_ID: 1},
            what="version 1 in a heartbeat",
        )
        assert store.get(AmphoraRecord, AMPHORA_ID).last_heartbeat_at > first

        # The controller recorded version 2 long ago: this amphora lags and gets it pushed again.
        store.save(
            LoadBalancerRecord(
                LB_ID, config_version=2, running_version=2,
                description={"listeners": listeners, "pools": pools},
                updated_at=utcnow().replace(year=2020),
            )
        )
        casts = CastRecorder()
        checker = HealthChecker(
            store, recorder, casts, heartbeat_timeout=1.0, threshold=FailoverThreshold.parse("1"),
            started_at=time.time() - 60,
        )
        outcome = checker.check()
        assert outcome.silent == [] and outcome.pushed == [LB_ID]
        assert casts.events() == [
            ("push_config",
             {"lb_id": LB_ID, "amphora_ids": [AMPHORA_ID], "listeners": listeners, "pools": pools})
        ]

        os.killpg(compute.agent_pid(compute_id), signal.SIGKILL)
        wait_for(lambda: checker.check().failed_over, what="a failover cast")
        assert casts.events()[-1] == ("failover_amphora", {"amphora_id": AMPHORA_ID})
    finally:
        rest.close()
        compute.close()


def test_an_agent_with_another_key_is_never_recorded(tmp_path, listener, caplog):
    pki = make_pki(str(tmp_path))
    compute, rest = make_drivers(str(tmp_path), pki)
    host, port = listener.address
    agent_conf = (
        f"[amphora_agent]\ncontroller_heartbeat_endpoints = {host}:{port}\n"
        "heartbeat_key = not-the-key\nheartbeat_interval = 0.1\n"
    ).encode()
    try:
        compute_id = compute.build(
            AMPHORA_ID, "image", {**pki.config_drive(AMPHORA_ID), "amphora_agent.conf": agent_conf}
        )
        wait_for(lambda: compute.get(compute_id).status == InstanceStatus.ACTIVE, what="agent ACTIVE")
        wait_for(lambda: "bad signature" in caplog.text, what="a refused heartbeat")
        assert listener.recorder.state_store.get(AmphoraRecord, AMPHORA_ID).last_heartbeat_at is None
    finally:
        rest.close()
        compute.close()
