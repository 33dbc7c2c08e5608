"""Real UDP on 127.0.0.1: the agent's sender thread, the manager's listener, the state store."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keramos.framework.agent_protocol import heartbeat as hb
from keramos.framework.config import make_conf
from keramos.framework.records import AmphoraRecord, AmphoraStatus, TaskRecord
from keramos.plugins.agent.heartbeat_sender import HeartbeatSender
from keramos.plugins.health.manager import HealthManager
from keramos.plugins.state_store.sqlalchemy import SQLAlchemyStateStore
from tests.unit.health_helpers import CastRecorder, wait_for

KEY = "udp-test-key"


@pytest.fixture
def store(tmp_path):
    store = SQLAlchemyStateStore(make_conf(config_files=[]), url=f"sqlite:///{tmp_path}/state.sqlite")
    yield store
    store.close()


@pytest.fixture
def manager(store):
    casts = CastRecorder()
    conf = make_conf(
        config_files=[],
        overrides={
            "health": {
                "bind_host": "127.0.0.1",
                "bind_port": 0,
                "heartbeat_key": KEY,
                "heartbeat_timeout": 0.5,
                "check_interval": 0.05,
            }
        },
    )
    running = HealthManager(conf, store, casts).start()
    running.casts = casts
    yield running
    running.stop()


def test_heartbeats_travel_from_the_sender_to_the_state_store(store, manager):
    store.save(AmphoraRecord("amp-udp", status=AmphoraStatus.READY))
    host, port = manager.listener.address
    sender = HeartbeatSender("amp-udp", [f"{host}:{port}"], KEY, 0.05, lambda: {"lb-1": 2}).start()
    try:
        first = wait_for(lambda: store.get(AmphoraRecord, "amp-udp").last_heartbeat_at, what="a heartbeat")
        wait_for(lambda: store.get(AmphoraRecord, "amp-udp").last_heartbeat_at > first, what="a second one")
        [report] = manager.recorder.reports(0)
        assert report.heartbeat.config_versions == {"lb-1": 2}
    finally:
        sender.stop()
    assert manager.casts.casts == []


def test_when_the_heartbeats_stop_the_amphora_is_failed_over(store, manager):
    store.save(AmphoraRecord("amp-udp", status=AmphoraStatus.READY))
    host, port = manager.listener.address
    sender = HeartbeatSender("amp-udp", [f"{host}:{port}"], KEY, 0.05, dict).start()
    wait_for(lambda: store.get(AmphoraRecord, "amp-udp").last_heartbeat_at, what="a heartbeat")
    sender.stop()
    wait_for(lambda: manager.casts.casts, what="a failover cast")
    assert manager.casts.events() == [("failover_amphora", {"amphora_id": "amp-udp"})]
    [task] = store.find(TaskRecord, event="failover_amphora")
    assert task.resource_id == "amp-udp"


def test_bad_datagrams_do_not_stop_the_listener(store, manager):
    store.save(AmphoraRecord("amp-udp", status=AmphoraStatus.READY))
    store.save(AmphoraRecord("amp-forged", status=AmphoraStatus.READY))
    host, port = manager.listener.address
    forged = hb.encode(hb.Heartbeat("amp-forged", 1, time.time(), {}), "wrong-key")
    oversized = hb.MAGIC + bytes(9000)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagram in (b"", b"junk", forged, oversized):
            sock.sendto(datagram, (host, port))
        sock.sendto(hb.encode(hb.Heartbeat("amp-udp", 2, time.time(), {}), KEY), (host, port))
    wait_for(lambda: store.get(AmphoraRecord, "amp-udp").last_heartbeat_at, what="the good heartbeat")
    assert store.get(AmphoraRecord, "amp-forged").last_heartbeat_at is None


def run_health(tmp_path, health: str, **kwargs) -> subprocess.Popen:
    config = tmp_path / "keramos.conf"
    config.write_text(
        f"[DEFAULT]\nstate_path = {tmp_path}\ntransport_url = fake://\n[health]\n{health}"
    )
    binary = Path(sys.executable).parent / "keramos-health"
    return subprocess.Popen(
        [str(binary), "--config-file", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs,
    )


def test_keramos_health_refuses_to_start_without_a_key(tmp_path):
    process = run_health(tmp_path, "bind_host = 127.0.0.1\nbind_port = 0\n")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "cannot start: [health] heartbeat_key must be set" in output


def test_keramos_health_records_heartbeats_and_stops_on_sigterm(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"sqlite:///{tmp_path}/keramos.sqlite"
    store = SQLAlchemyStateStore(make_conf(config_files=[]), url=url)
    store.save(AmphoraRecord("amp-cli", status=AmphoraStatus.READY))
    process = run_health(tmp_path, f"bind_host = 127.0.0.1\nbind_port = {port}\nheartbeat_key = {KEY}\n")
    sender = HeartbeatSender("amp-cli", [f"127.0.0.1:{port}"], KEY, 0.1, dict).start()
    try:
        wait_for(lambda: store.get(AmphoraRecord, "amp-cli").last_heartbeat_at, timeout=60, what="a heartbeat")
    finally:
        sender.stop()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        store.close()
    assert process.returncode == 0, output
