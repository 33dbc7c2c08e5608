"""OpenStack Octavia 19.0.0's own ``AmphoraAPIClient1_0`` driving a real keramos-agent.

Run by ``tox -e octavia-compat`` (Octavia installed from PyPI in its own environment). The agent is
a real gunicorn process with mutual TLS (server CA and client CA distinct, as Octavia deploys
them); the client is Octavia's, configured through Octavia's own ``[haproxy_amphora]`` options.
Every API 1.0 method of the client is called: those Keramos implements must behave as Octavia's
agent does (status codes, body shapes, content types); the others must answer 501 with a JSON
body, which Octavia's ``check_exception`` does not turn into an exception, so the test reads it.
"""

from __future__ import annotations

import hashlib
import os
import types
import urllib.request
from collections.abc import Iterator

import pytest
from octavia.amphorae.drivers.haproxy import exceptions as octavia_exc
from octavia.amphorae.drivers.haproxy import rest_api_driver
from octavia.common import config as octavia_config

from tests.functional.agent_helpers import (
    AgentProcess,
    free_port,
    http_backend,
    issue,
    make_pki,
    require_keepalived,
    run_agent,
)

AMPHORA_ID = "6bd3a4c8-compat-amphora"
LB_ID = "0f1d7a9e-compat-lb"
LISTENER_ID = "5e4d1c2b-compat-listener"
UDP_LISTENER_ID = "9a8b7c6d-compat-udp"
UDP_CONFIG = b"global_defs {\n    router_id octavia_compat\n}\n"


def haproxy_config(listener_port: int, backend_port: int, tag: str = "") -> bytes:
    """A configuration shaped like Octavia's: one frontend per listener, named by its id."""
    return (
        "global\n    maxconn 100\n"
        "defaults\n    mode http\n    timeout connect 2s\n    timeout client 5s\n"
        "    timeout server 5s\n"
        f"frontend {LISTENER_ID}\n    mode http\n    bind 127.0.0.1:{listener_port}\n"
        f"    default_backend pool\n"
        f"backend pool\n    mode http\n    server member-1 127.0.0.1:{backend_port}\n"
        f"# {tag}\n"
    ).encode()


@pytest.fixture(scope="module")
def agent(tmp_path_factory) -> Iterator[AgentProcess]:
    directory = str(tmp_path_factory.mktemp("octavia-compat"))
    pki = make_pki(directory)
    with run_agent(directory, pki, AMPHORA_ID, keepalived_binary=require_keepalived()) as running:
        yield running


@pytest.fixture(scope="module")
def client(agent) -> Iterator[rest_api_driver.AmphoraAPIClient1_0]:
    """Octavia's client, with Octavia's options pointing at the agent's PKI."""
    conf = octavia_config.cfg.CONF
    bundle = agent.pki.path("octavia_client.pem")
    with open(bundle, "wb") as stream:
        stream.write(agent.pki.controller.cert_pem + agent.pki.controller.key_pem)
    overrides = {
        "client_cert": bundle,
        "server_ca": agent.pki.path("server_ca_cert.pem"),
        "bind_port": agent.port,
        "connection_max_retries": 2,
        "connection_retry_interval": 0,
        "rest_request_conn_timeout": 5,
        "rest_request_read_timeout": 60,
    }
    for name, value in overrides.items():
        conf.set_override(name, value, group="haproxy_amphora")
    yield rest_api_driver.AmphoraAPIClient1_0()
    for name in overrides:
        conf.clear_override(name, group="haproxy_amphora")


@pytest.fixture
def amp() -> types.SimpleNamespace:
    """What the client reads of Octavia's Amphora model."""
    return types.SimpleNamespace(id=AMPHORA_ID, lb_network_ip="127.0.0.1", api_version="1.0")


def _get_through(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        return response.read()


def test_version_info_and_details(client, amp):
    assert client.get_api_version(amp) == {"api_version": "1.0"}
    amp.api_version = "1.0"
    info = client.get_info(amp)
    assert {"hostname", "haproxy_version", "api_version"} <= set(info)
    details = client.get_details(amp)
    for key in (
        "hostname", "haproxy_version", "api_version", "networks", "active", "haproxy_count",
        "cpu_count", "cpu", "memory", "disk", "load", "topology", "topology_status",
        "listeners", "packages", "active_tuned_profiles",
    ):
        assert key in details, key
    assert details["cpu_count"] == os.cpu_count() and details["memory"]["total"] > 0


def test_push_read_back_reload_traffic_list_and_delete(client, amp):
    listener_port = free_port()
    with http_backend(b"served through octavia's push\n") as backend_port:
        config = haproxy_config(listener_port, backend_port)
        assert client.upload_config(amp, LB_ID, config).status_code == 202
        read = client.get(amp, f"loadbalancer/{LB_ID}/haproxy")
        assert read.status_code == 200
        assert read.headers["Content-Type"].startswith("text/plain")
        assert read.content == config
        assert client.reload_listener(amp, LB_ID).status_code == 202
        assert _get_through(listener_port) == b"served through octavia's push\n"
        assert client.start_listener(amp, LB_ID).status_code == 202

        listeners = client.get_all_listeners(amp)
        assert {"status": "ACTIVE", "uuid": LISTENER_ID, "type": "HTTP"} in listeners
        assert client.get_listener_status(amp, LISTENER_ID) == {
            "status": "ACTIVE", "uuid": LISTENER_ID, "type": "HTTP",
        }
        assert client.get_listener_status(amp, LB_ID) == {
            "status": "ACTIVE", "uuid": LB_ID, "type": "HTTP",
            "listeners": [{"status": "ACTIVE", "uuid": LISTENER_ID, "type": "HTTP"}],
        }
        assert LISTENER_ID in client.get_details(amp)["listeners"]

        changed = haproxy_config(listener_port, backend_port, "second push")
        assert client.upload_config(amp, LB_ID, changed).status_code == 202
        assert client.reload_listener(amp, LB_ID).status_code == 202
        assert _get_through(listener_port) == b"served through octavia's push\n"

        assert client.delete_listener(amp, LB_ID).status_code == 200
        with pytest.raises(OSError):
            _get_through(listener_port)
        gone = client.get(amp, f"loadbalancer/{LB_ID}/haproxy")
        assert gone.status_code == 404 and gone.headers["Content-Type"] == "application/json"
        assert client.get_all_listeners(amp) == []
        assert client.delete_listener(amp, LB_ID).status_code == 200


def test_an_unversioned_push_cannot_roll_back_a_versioned_one(client, amp):
    lb_id = "versioned-by-keramos"
    versioned = client.put(
        amp,
        f"loadbalancer/{AMPHORA_ID}/{lb_id}/haproxy",
        data=haproxy_config(free_port(), 1, "v7"),
        headers={"X-Config-Version": "7"},
    )
    assert versioned.status_code == 202
    with pytest.raises(octavia_exc.Conflict):
        client.upload_config(amp, lb_id, haproxy_config(free_port(), 1, "stale"))
    assert b"v7" in client.get(amp, f"loadbalancer/{lb_id}/haproxy").content
    client.delete_listener(amp, lb_id)


def test_listener_certificates_upload_md5_and_delete(client, amp):
    pem = issue(None, "www.example.com", server=True).bundle
    assert client.upload_cert_pem(amp, LB_ID, "www.pem", pem).status_code == 200
    assert client.get_cert_md5sum(amp, LB_ID, "www.pem") == hashlib.md5(pem).hexdigest()
    assert client.delete_cert_pem(amp, LB_ID, "www.pem").status_code == 200
    with pytest.raises(octavia_exc.NotFound):
        client.get_cert_md5sum(amp, LB_ID, "www.pem")
    assert client.get_cert_md5sum(amp, LB_ID, "www.pem", ignore=(404,)) is None


def test_server_certificate_rotation_and_agent_config(client, amp, agent):
    rotated = issue(agent.pki.server_ca, AMPHORA_ID, server=True)
    assert client.update_cert_for_rotation(amp, rotated.bundle).status_code == 202
    assert client.get_info(amp)["api_version"] == "1.0"
    agent_config = b"[amphora_agent]\nheartbeat_interval = 10\n"
    assert client.update_agent_config(amp, agent_config).status_code == 202


def test_udp_listener_upload_start_stop_and_delete(client, amp):
    assert client.upload_udp_config(amp, UDP_LISTENER_ID, UDP_CONFIG).status_code == 200
    assert client.start_listener(amp, UDP_LISTENER_ID).status_code == 202
    listeners = client.get_all_listeners(amp)
    assert {"status": "OFFLINE", "uuid": UDP_LISTENER_ID, "type": "UDP"} in listeners
    assert client.reload_listener(amp, UDP_LISTENER_ID).status_code == 202
    stop = client.put(amp, f"loadbalancer/{UDP_LISTENER_ID}/stop")
    assert stop.status_code == 202
    assert client.delete_listener(amp, UDP_LISTENER_ID).status_code == 200
    assert client.get_all_listeners(amp) == []


def test_what_keramos_does_not_implement_answers_501_with_a_reason(client, amp):
    port = {"mac_address": "fa:16:3e:00:00:01", "fixed_ips": [], "mtu": 1500}
    net_info = {"subnet_cidr": "203.0.113.0/24", "gateway": "203.0.113.1", "mac_address": "fa:16:3e:00:00:02"}
    answers = {
        "plug_network": client.plug_network(amp, port),
        "plug_vip": client.plug_vip(amp, "203.0.113.5", net_info),
        "upload_vrrp_config": client.upload_vrrp_config(amp, b"vrrp_instance x {}\n"),
        "vrrp start": client.start_vrrp(amp),
        "vrrp stop": client.stop_vrrp(amp),
        "vrrp reload": client.reload_vrrp(amp),
        "set_interface_rules": client.set_interface_rules(amp, "203.0.113.5", []),
    }
    for what, response in answers.items():
        assert response.status_code == 501, what
        assert response.headers["Content-Type"] == "application/json"
        body = response.json()
        assert body["message"] == "Not Implemented"
        assert body["details"].startswith(f"{what} is not implemented by Keramos: ")
    interface = client.get_interface(amp, "203.0.113.5")
    assert interface["message"] == "Not Implemented" and "interface" not in interface
