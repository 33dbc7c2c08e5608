"""New amphorae are told where to send their signed heartbeats: the lifecycle flows write the
health manager endpoints and key into the agent configuration of the config drive."""

from __future__ import annotations

import pytest
from oslo_config import cfg

from keramos.flows.tasks.amphora import AGENT_CONFIG_FILE
from keramos.framework.errors import KeramosError
from keramos.framework.testing import InProcessWorker
from keramos.plugins.agent.options import register_opts as register_agent_opts
from tests.unit.amphora_helpers import RecordingCompute

PAYLOAD = {"amphora_id": "amp-1", "image_id": "img-1"}
KEY = "heartbeat key shared with the health manager"


def agent_options(tmp_path, drive: dict[str, bytes]) -> cfg.ConfigOpts:
    """The agent's options as the agent parses them from the config drive file."""
    path = tmp_path / AGENT_CONFIG_FILE
    path.write_bytes(drive[AGENT_CONFIG_FILE])
    conf = cfg.ConfigOpts()
    register_agent_opts(conf)
    conf([], project="keramos-agent-test", default_config_files=[str(path)])
    return conf


def test_create_and_failover_hand_the_agent_the_health_manager_endpoints_and_key(tmp_path):
    overrides = {
        "amphora": {"controller_heartbeat_endpoints": ["192.0.2.10:5555", "192.0.2.11:5555"],
                    "heartbeat_interval": 2.5},
        "health": {"heartbeat_key": KEY},
    }
    with InProcessWorker(compute=RecordingCompute, conf_overrides=overrides) as worker:
        worker.run("create_amphora", PAYLOAD)
        agent = agent_options(tmp_path, worker.drivers.compute.drives["amp-1"]).amphora_agent
        assert agent.controller_heartbeat_endpoints == ["192.0.2.10:5555", "192.0.2.11:5555"]
        assert agent.heartbeat_interval == 2.5
        assert agent.heartbeat_key == KEY

        result = worker.run("failover_amphora", {"amphora_id": "amp-1"})
        replacement = result["amphora"]["amphora_id"]
        drive = worker.drivers.compute.drives[replacement]
        assert agent_options(tmp_path, drive).amphora_agent.heartbeat_key == KEY


def test_without_endpoints_the_config_drive_carries_no_agent_configuration():
    with InProcessWorker(compute=RecordingCompute, conf_overrides={"health": {"heartbeat_key": KEY}}) as worker:
        worker.run("create_amphora", PAYLOAD)
        drive = worker.drivers.compute.drives["amp-1"]
        assert AGENT_CONFIG_FILE not in drive
        assert not any(KEY.encode() in data for data in drive.values())


def test_endpoints_without_a_key_stop_the_worker_at_start_naming_both_options():
    overrides = {"amphora": {"controller_heartbeat_endpoints": ["192.0.2.10:5555"]}}
    with pytest.raises(KeramosError, match=r"controller_heartbeat_endpoints.*heartbeat_key"):
        with InProcessWorker(compute=RecordingCompute, conf_overrides=overrides):
            pass
