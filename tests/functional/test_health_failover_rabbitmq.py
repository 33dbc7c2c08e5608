"""Issue #6 end to end, nothing cast by hand: a keramos-worker process and the real
``keramos-health`` program over the real RabbitMQ, sharing one SQLite state store.

create_amphora with a load balancer -> READY -> traffic -> the amphora's agent heartbeats reach
the health manager -> the agent and HAProxy are killed -> the health manager finds the amphora
silent and casts failover_amphora itself -> the replacement is READY, heartbeats, and traffic
flows through it; the old amphora is DELETED.

Drivers: local dual CA and store, process compute (real agents and HAProxy), rest amphora driver.
Needs RabbitMQ and haproxy: fails under CI=true when either is missing.
"""

from __future__ import annotations

import configparser
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keramos.framework.config import make_conf
from keramos.framework.errors import KeramosError
from keramos.framework.records import AmphoraRecord, AmphoraStatus, TaskRecord, TaskState
from keramos.plugins.state_store.sqlalchemy import SQLAlchemyStateStore
from tests.functional.agent_helpers import free_port, http_backend
from tests.functional.lifecycle_helpers import (
    BODY,
    LIFECYCLE_DRIVERS,
    description,
    instance_process_groups,
    lifecycle_settings,
    wait_for_traffic,
)
from tests.unit.health_helpers import wait_for
from tests.unit.observability_helpers import OtlpCollector, eventually, scrape, tree

AMPHORA_ID = "amp-health-failover"
LB_ID = "lb-health-fo"
HEARTBEAT_KEY = "health failover test key"
HEARTBEAT_TIMEOUT = 3.0


def free_udp_port() -> int:
    """A loopback UDP port nothing is bound to right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class HealthProcess:
    """The ``keramos-health`` program as a subprocess, its output in a file."""

    def __init__(self, directory: Path, sections: dict[str, dict[str, Any]]) -> None:
        directory.mkdir()
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_dict({group: {name: str(value) for name, value in values.items()}
                          for group, values in sections.items()})
        self.config_file = directory / "keramos-health.conf"
        with open(self.config_file, "w") as config:
            parser.write(config)
        self.output_file = directory / "health.log"
        with open(self.output_file, "ab") as output:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "keramos-health"), "--config-file", str(self.config_file)],
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.output_file.read_text(errors="replace") if self.output_file.exists() else ""

    def wait_listening(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while "listening on" not in self.output():
            if self.process.poll() is not None:
                raise AssertionError(f"keramos-health exited {self.process.returncode}")
            if time.monotonic() > deadline:
                raise AssertionError(f"keramos-health not listening after {timeout:g}s")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; the exit status."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


@pytest.fixture
def state_store(tmp_path) -> Iterator[SQLAlchemyStateStore]:
    """The state store the worker and the health manager share (one SQLite file)."""
    store = SQLAlchemyStateStore(make_conf(config_files=[]), url=f"sqlite:///{tmp_path}/state.sqlite")
    yield store
    store.close()


def test_the_health_manager_fails_over_a_killed_amphora_and_traffic_returns(
    worker_process, state_store, tmp_path, monkeypatch
):
    heartbeat_port = free_udp_port()
    collector = OtlpCollector()
    tracing = {"enabled": True, "otlp_endpoint": collector.url}
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    settings = lifecycle_settings(str(tmp_path))
    settings["drivers"] = dict(LIFECYCLE_DRIVERS)
    settings["state_store"] = {"connection": state_store.url}
    settings["amphora"] = {
        "require_signed_images": False,
        "active_timeout": 60.0,
        "agent_timeout": 60.0,
        "controller_heartbeat_endpoints": f"127.0.0.1:{heartbeat_port}",
        "heartbeat_interval": 0.5,
    }
    settings["health"] = {"heartbeat_key": HEARTBEAT_KEY}
    settings["tracing"] = tracing
    worker = worker_process(settings)
    metrics_address = ("127.0.0.1", free_port())
    health = HealthProcess(
        tmp_path / "health",
        {
            "DEFAULT": {
                "transport_url": worker.conf().transport_url,
                "control_exchange": worker.conf().control_exchange,
            },
            "worker": {"topic": worker.topic},
            "state_store": {"connection": state_store.url},
            "health": {
                "bind_host": "127.0.0.1",
                "bind_port": heartbeat_port,
                "heartbeat_key": HEARTBEAT_KEY,
                "heartbeat_timeout": HEARTBEAT_TIMEOUT,
                "check_interval": 0.5,
                "failover_threshold": "1",
            },
            "metrics": {"bind": "%s:%d" % metrics_address},
            "tracing": tracing,
        },
    )

    def logs() -> str:
        return f"--- worker log ---\n{worker.log()}\n--- keramos-health output ---\n{health.output()}"

    def amphora(amphora_id: str) -> AmphoraRecord:
        record = state_store.get(AmphoraRecord, amphora_id)
        assert record is not None, f"no amphora {amphora_id}"
        return record

    def heartbeat_after(amphora_id: str, moment: float) -> bool:
        heard = amphora(amphora_id).last_heartbeat_at
        return heard is not None and heard.timestamp() > moment

    replacement_id = None
    try:
        health.wait_listening()
        listener_port = free_port()
        with http_backend(BODY) as backend_port, worker.client() as client:
            lb = {"lb_id": LB_ID, **description(listener_port, backend_port)}
            created = client.wait(
                client.cast("create_amphora", {"amphora_id": AMPHORA_ID, "image_id": "img", "lb": lb}),
                timeout=60,
            )
            assert created["state"] == TaskState.SUCCESS
            old = created["result"]["amphora"]
            assert old["status"] == AmphoraStatus.READY
            wait_for_traffic(listener_port)
            ready_at = time.time()
            wait_for(lambda: heartbeat_after(AMPHORA_ID, ready_at), 10, what=f"a heartbeat from {AMPHORA_ID}")
            # Alive past the heartbeat timeout: its heartbeats, not the clock, keep it from failover.
            time.sleep(HEARTBEAT_TIMEOUT + 1)
            assert state_store.find(TaskRecord, event="failover_amphora") == []
            assert heartbeat_after(AMPHORA_ID, time.time() - 2)

            groups = instance_process_groups(old["compute_id"])
            assert groups
            for group in groups:
                os.killpg(group, signal.SIGKILL)

            failover = wait_for(
                lambda: state_store.find(TaskRecord, event="failover_amphora", resource_id=AMPHORA_ID),
                HEARTBEAT_TIMEOUT + 10,
                what=f"a failover_amphora cast by keramos-health for {AMPHORA_ID}",
            )
            assert len(failover) == 1, failover
            failed_over = client.wait(failover[0].request_id, timeout=45)
            assert failed_over["state"] == TaskState.SUCCESS
            new = failed_over["result"]["amphora"]
            replacement_id = new["amphora_id"]
            assert replacement_id.startswith(f"{AMPHORA_ID}-fo-")
            assert new["status"] == AmphoraStatus.READY
            assert failed_over["result"]["moved_loadbalancers"] == [LB_ID]
            assert amphora(AMPHORA_ID).status == AmphoraStatus.DELETED
            wait_for_traffic(listener_port)
            replaced_at = time.time()
            wait_for(
                lambda: heartbeat_after(replacement_id, replaced_at), 10, what=f"a heartbeat from {replacement_id}"
            )
            assert amphora(replacement_id).status == AmphoraStatus.READY
            assert state_store.find(TaskRecord, event="failover_amphora", resource_id=replacement_id) == []
            samples = scrape(metrics_address)
            assert samples["keramos_failovers_total"] == {(): 1.0}
            assert samples["keramos_failovers_blocked_total"] == {(): 0.0}
            ages = samples["keramos_amphora_heartbeat_age_seconds"]
            assert list(ages) == [(("amphora_id", replacement_id),)]
            assert 0 <= ages[(("amphora_id", replacement_id),)] < HEARTBEAT_TIMEOUT
            # The health manager's cast and the worker's failover are one trace, down to the agents.
            cast = wait_for(
                lambda: [span for span in collector.spans if span.name == "cast failover_amphora"],
                10, what="the health manager's failover cast span",
            )[0]

            def failover_trace() -> dict[str, list[str]]:
                shape = tree(collector.spans, cast.trace_id)
                assert shape["cast failover_amphora"] == ["flow failover_amphora"]
                return shape

            shape = eventually(failover_trace, 10)
            assert shape[""] == ["cast failover_amphora"]
            assert any(
                child.startswith("agent ") for task in shape["flow failover_amphora"] for child in shape.get(task, [])
            ), shape

            assert health.stop() == 0
            deleted = client.wait(client.cast("delete_amphora", {"amphora_id": replacement_id}), timeout=30)
            assert deleted["state"] == TaskState.SUCCESS
            assert instance_process_groups(new["compute_id"]) == set()
            replacement_id = None
    except (AssertionError, KeramosError) as error:
        raise AssertionError(f"{error}\n{logs()}") from error
    finally:
        health.stop()
        if replacement_id is not None:
            with worker.client() as client:
                client.cast("delete_amphora", {"amphora_id": replacement_id})
