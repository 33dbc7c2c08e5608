"""UDP listeners on a real agent with the real keepalived, pushed by the controller's REST driver.

What is proven: ``keepalived --config-test`` refuses a bad configuration and nothing is stored;
a stored configuration runs one keepalived per listener with its own pid files; start, stop,
reload and ``DELETE /listeners/<id>`` manage that process like an HAProxy load balancer's.

What is not: traffic. LVS needs the ``ip_vs`` kernel module, which this test machine (a
container) does not have; keepalived's checker then exits at start ("IPVS: Can't initialize
ipvs"), and the agent answers that start with 500 and keepalived's own words, which the last test
checks. The running keepalived is therefore shown with Octavia's disabled-listener configuration
(no ``virtual_server``), which keepalived runs without touching LVS.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from keramos.framework.config import make_conf
from keramos.framework.contracts import AmphoraEndpoint
from keramos.plugins.agent.haproxy import process_alive
from keramos.plugins.amphora_rest import AgentError, RestAmphoraDriver
from keramos.plugins.amphora_rest import list_opts as rest_list_opts
from tests.functional.agent_helpers import AgentProcess, make_pki, require_keepalived, run_agent

AMPHORA_ID = "amp-udp"
OFFLINE_CONFIG = "global_defs {\n    router_id keramos_udp\n}\n"
LVS_CONFIG = """global_defs {
    router_id keramos_udp
}
virtual_server 127.0.0.1 15353 {
    delay_loop 5
    lb_algo rr
    lb_kind NAT
    protocol UDP
    real_server 127.0.0.1 15354 {
        weight 1
    }
}
"""


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Iterator[tuple[AgentProcess, RestAmphoraDriver, AmphoraEndpoint]]:
    directory = str(tmp_path_factory.mktemp("agent-udp"))
    pki = make_pki(directory)
    conf = make_conf([], config_files=[], overrides={"DEFAULT": {"state_path": directory}})
    for group, opts in rest_list_opts():
        conf.register_opts(opts, group=group)
    for name, value in pki.rest_overrides().items():
        conf.set_override(name, value, group="amphora_rest")
    conf.set_override("retries", 0, group="amphora_rest")
    with run_agent(directory, pki, AMPHORA_ID, keepalived_binary=require_keepalived()) as agent:
        rest = RestAmphoraDriver(conf)
        try:
            yield agent, rest, AmphoraEndpoint(AMPHORA_ID, "127.0.0.1", agent.port)
        finally:
            rest.close()


def _pids(agent: AgentProcess, listener_id: str) -> list[int]:
    directory = agent.path("state", "udp_listeners", listener_id)
    config = os.path.join(directory, "keepalived.conf")
    pids = []
    for name in ("keepalived.pid", "checkers.pid", "vrrp.pid"):
        try:
            with open(os.path.join(directory, name), encoding="ascii") as stream:
                pid = int(stream.read())
        except FileNotFoundError:
            continue
        if process_alive(pid, config):
            pids.append(pid)
    return pids


def test_keepalived_refuses_a_bad_configuration_and_nothing_is_stored(deployed):
    agent, rest, endpoint = deployed
    with pytest.raises(AgentError) as excinfo:
        rest.upload_udp_listener_config(endpoint, "udp-bad", "virtual_server 127.0.0.1 {\n  bogus\n")
    assert excinfo.value.status == 400
    assert "bogus" in excinfo.value.details
    assert not os.path.exists(agent.path("state", "udp_listeners", "udp-bad", "keepalived.conf"))


def test_each_listener_runs_its_own_keepalived_started_stopped_and_deleted(deployed):
    agent, rest, endpoint = deployed
    rest.upload_udp_listener_config(endpoint, "udp-a", OFFLINE_CONFIG, version=1)
    rest.upload_udp_listener_config(endpoint, "udp-b", OFFLINE_CONFIG)
    first, second = _pids(agent, "udp-a"), _pids(agent, "udp-b")
    assert first and second and not set(first) & set(second)
    assert rest.get_udp_listener_config(endpoint, "udp-a") == OFFLINE_CONFIG
    info = rest.get_info(endpoint)["udp_listeners"]
    assert info["udp-a"] == {"config_version": 1, "running": True, "status": "OFFLINE"}
    assert info["udp-b"]["config_version"] is None

    assert "stopped" in rest.action(endpoint, "udp-a", "stop")
    assert _pids(agent, "udp-a") == [] and _pids(agent, "udp-b") == second
    assert "started" in rest.action(endpoint, "udp-a", "start")
    restarted = _pids(agent, "udp-a")
    assert restarted and restarted != first

    rest.delete_listener(endpoint, "udp-a")
    assert _pids(agent, "udp-a") == []
    with pytest.raises(AgentError) as excinfo:
        rest.get_udp_listener_config(endpoint, "udp-a")
    assert excinfo.value.status == 404
    rest.delete_listener(endpoint, "udp-b")
    assert _pids(agent, "udp-b") == []


def test_an_lvs_configuration_is_validated_and_its_start_reports_what_keepalived_said(deployed):
    agent, rest, endpoint = deployed
    if os.path.exists("/proc/net/ip_vs"):
        rest.upload_udp_listener_config(endpoint, "udp-lvs", LVS_CONFIG)
        assert _pids(agent, "udp-lvs")
        return
    with pytest.raises(AgentError) as excinfo:
        rest.upload_udp_listener_config(endpoint, "udp-lvs", LVS_CONFIG)
    assert excinfo.value.status == 500
    assert excinfo.value.operation.endswith("/udp-lvs/reload")
    assert "ipvs" in excinfo.value.details.lower()
    assert rest.get_udp_listener_config(endpoint, "udp-lvs") == LVS_CONFIG
    assert _pids(agent, "udp-lvs") == []
    rest.delete_listener(endpoint, "udp-lvs")
