"""Octavia's API 1.0 routes on the agent, through Flask's test client: unversioned pushes, the
listener routes, UDP listener uploads, ``/details`` keys and the 501 answers.

HAProxy and keepalived are stand-ins here (a configuration with the word ``bogus`` is refused);
the real programs run in tests/functional/test_agent_udp_listener.py and tests/compat.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import flask.testing
import pytest

from keramos.plugins.agent import haproxy as haproxy_module
from keramos.plugins.agent.options import AgentSettings
from keramos.plugins.agent.server import create_app

AMPHORA_ID = "amp-1"
LB_ID = "lb-1"
LISTENER_ID = "3f1b9c2e-listener"
UDP_ID = "udp-listener-1"
CONFIG = (
    b"global\n    maxconn 10\n"
    + f"frontend {LISTENER_ID}\n    mode http\n    bind 127.0.0.1:1\n".encode()
    + b"frontend tls-listener\n    mode http\n    bind 127.0.0.1:2 ssl crt /x.pem\n"
    + b"backend pool\n    mode tcp\n"
)
UDP_CONFIG = b"virtual_server 127.0.0.1 5353 {\n    protocol UDP\n}\n"
FAKE_CHECKER = f"""#!{sys.executable}
import sys
args = sys.argv[1:]
if args in (["-v"], ["--version"]):
    print("HAProxy version 9.9.9-fake 2026/01/01" if args == ["-v"] else "Keepalived v9.9.9 (fake)")
    sys.exit(0)
path = args[-1]
if "bogus" in open(path).read():
    print("unknown keyword 'bogus' in " + path, file=sys.stderr)
    sys.exit(1)
sys.exit(0)
"""


@pytest.fixture
def settings(tmp_path) -> AgentSettings:
    binary = tmp_path / "checker"
    binary.write_text(FAKE_CHECKER)
    binary.chmod(0o700)
    return AgentSettings(
        state_dir=str(tmp_path / "state"),
        amphora_id=AMPHORA_ID,
        haproxy_binary=str(binary),
        keepalived_binary=str(binary),
        max_config_bytes=4096,
        max_certificate_bytes=2048,
    )


@pytest.fixture
def client(settings) -> Iterator[flask.testing.FlaskClient]:
    yield create_app(settings).test_client()


def push(client, config: bytes = CONFIG, version: str | None = None, lb_id: str = LB_ID):
    headers = {} if version is None else {"X-Config-Version": version}
    return client.put(f"/1.0/loadbalancer/{AMPHORA_ID}/{lb_id}/haproxy", data=config, headers=headers)


def push_udp(client, config: bytes = UDP_CONFIG, version: str | None = None):
    headers = {} if version is None else {"X-Config-Version": version}
    path = f"/1.0/listeners/{AMPHORA_ID}/{UDP_ID}/udp_listener"
    return client.put(path, data=config, headers=headers)


def test_an_unversioned_push_is_accepted_and_reads_back_without_a_version(client):
    response = push(client)
    assert response.status_code == 202
    assert "X-Config-Version" not in response.headers
    read = client.get(f"/1.0/loadbalancer/{LB_ID}/haproxy")
    assert read.data == CONFIG and "X-Config-Version" not in read.headers
    assert client.get("/1.0/info").get_json()["loadbalancers"][LB_ID]["config_version"] is None
    again = push(client, CONFIG + b"# second\n")
    assert again.status_code == 202
    assert client.get(f"/1.0/loadbalancer/{LB_ID}/haproxy").data == CONFIG + b"# second\n"


def test_a_versioned_push_takes_over_and_unversioned_ones_are_then_refused(client):
    assert push(client).status_code == 202
    assert push(client, CONFIG + b"# v1\n", "1").status_code == 202
    refused = push(client, CONFIG + b"# late retry\n")
    assert refused.status_code == 409
    assert "send X-Config-Version" in refused.get_json()["details"]
    assert client.get(f"/1.0/loadbalancer/{LB_ID}/haproxy").data == CONFIG + b"# v1\n"


def test_an_unversioned_push_stays_refused_after_the_versioned_lb_was_deleted(client):
    assert push(client, CONFIG, "4").status_code == 202
    assert client.delete(f"/1.0/listeners/{LB_ID}").status_code == 200
    assert push(client).status_code == 409


def test_listeners_lists_every_frontend_with_octavia_types(client):
    push(client)
    listeners = client.get("/1.0/listeners")
    assert listeners.status_code == 200 and listeners.mimetype == "application/json"
    assert sorted(listeners.get_json(), key=lambda item: item["uuid"]) == [
        {"status": "OFFLINE", "uuid": LISTENER_ID, "type": "HTTP"},
        {"status": "OFFLINE", "uuid": "tls-listener", "type": "TERMINATED_HTTPS"},
    ]
    one = client.get(f"/1.0/listeners/{LISTENER_ID}")
    assert one.get_json() == {"status": "OFFLINE", "uuid": LISTENER_ID, "type": "HTTP"}
    missing = client.get("/1.0/listeners/nope")
    assert missing.status_code == 404 and missing.mimetype == "application/json"


def test_a_listener_status_asked_by_load_balancer_id_is_its_haproxys(client):
    push(client)
    by_lb = client.get(f"/1.0/listeners/{LB_ID}")
    assert by_lb.status_code == 200 and by_lb.mimetype == "application/json"
    assert by_lb.get_json() == {
        "status": "OFFLINE",
        "uuid": LB_ID,
        "type": "HTTP,TERMINATED_HTTPS",
        "listeners": [
            {"status": "OFFLINE", "uuid": LISTENER_ID, "type": "HTTP"},
            {"status": "OFFLINE", "uuid": "tls-listener", "type": "TERMINATED_HTTPS"},
        ],
    }
    assert client.delete(f"/1.0/listeners/{LB_ID}").status_code == 200
    assert client.get(f"/1.0/listeners/{LB_ID}").status_code == 404


def test_delete_listener_with_the_lb_id_removes_the_load_balancer(client, settings):
    push(client)
    cert = client.put(f"/1.0/loadbalancer/{LB_ID}/certificates/x.pem", data=b"not a cert")
    assert cert.status_code == 400
    response = client.delete(f"/1.0/listeners/{LB_ID}")
    assert response.status_code == 200 and response.get_json()["message"] == "OK"
    assert client.get(f"/1.0/loadbalancer/{LB_ID}/haproxy").status_code == 404
    assert client.get("/1.0/listeners").get_json() == []
    assert client.delete(f"/1.0/listeners/{LB_ID}").status_code == 200


def test_a_udp_listener_config_is_checked_stored_and_listed(client, settings):
    response = push_udp(client)
    assert response.status_code == 200 and response.headers["ETag"]
    assert client.get(f"/1.0/listeners/{UDP_ID}/udp_listener").data == UDP_CONFIG
    assert {"status": "OFFLINE", "uuid": UDP_ID, "type": "UDP"} in client.get("/1.0/listeners").get_json()
    refused = push_udp(client, b"virtual_server bogus {\n")
    assert refused.status_code == 400
    assert "bogus" in refused.get_json()["details"]
    assert client.get(f"/1.0/listeners/{UDP_ID}/udp_listener").data == UDP_CONFIG
    directory = os.path.join(settings.state_dir, "udp_listeners", UDP_ID)
    assert sorted(os.listdir(directory)) == [".lock", "keepalived.conf", "state.json"]


def test_a_udp_listener_follows_the_version_rules(client):
    assert push_udp(client, version="2").status_code == 200
    assert push_udp(client, UDP_CONFIG + b"# old\n", version="1").status_code == 409
    assert push_udp(client, UDP_CONFIG + b"# unversioned\n").status_code == 409


def test_a_udp_listener_id_cannot_also_be_a_load_balancer(client):
    push_udp(client)
    assert push(client, lb_id=UDP_ID).status_code == 409


def test_delete_listener_with_a_udp_listener_id_deletes_the_udp_listener(client):
    push_udp(client)
    assert client.delete(f"/1.0/listeners/{UDP_ID}").status_code == 200
    assert client.get(f"/1.0/listeners/{UDP_ID}/udp_listener").status_code == 404
    assert client.get("/1.0/listeners").get_json() == []


def test_details_carry_octavia_keys_with_real_values(client):
    push(client)
    push_udp(client)
    details = client.get("/1.0/details").get_json()
    octavia_keys = {
        "hostname", "haproxy_version", "api_version", "networks", "active", "haproxy_count",
        "cpu_count", "cpu", "memory", "disk", "load", "active_tuned_profiles", "topology",
        "topology_status", "listeners", "packages", "lvs_listener_process_count",
        "keepalived_version", "ipvsadm_version",
    }
    assert octavia_keys <= set(details)
    assert details["cpu_count"] == os.cpu_count()
    assert details["cpu"]["total"] >= details["cpu"]["user"] > 0
    assert {"total", "free", "buffers", "cached", "swap_used", "shared", "slab"} <= set(details["memory"])
    assert details["disk"]["available"] > 0
    assert len(details["load"]) == 3
    assert details["listeners"] == sorted([LISTENER_ID, "tls-listener", UDP_ID])
    assert details["keepalived_version"] == "9.9.9"
    assert (details["topology"], details["active"]) == ("SINGLE", True)


@pytest.mark.parametrize(
    ("method", "path", "what"),
    [
        ("post", "/1.0/plug/vip/203.0.113.5", "plug_vip"),
        ("post", "/1.0/plug/network", "plug_network"),
        ("get", "/1.0/interface/203.0.113.5", "get_interface"),
        ("put", "/1.0/interface/203.0.113.5/rules", "set_interface_rules"),
        ("put", "/1.0/vrrp/upload", "upload_vrrp_config"),
        ("put", "/1.0/vrrp/start", "vrrp start"),
    ],
)
def test_routes_keramos_does_not_implement_answer_501_saying_why(client, method, path, what):
    response = getattr(client, method)(path, json={"mac_address": "fa:16:3e:00:00:01"})
    assert response.status_code == 501
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["message"] == "Not Implemented"
    assert body["details"].startswith(f"{what} is not implemented by Keramos: ")


def test_frontends_parser_reads_modes_and_tls():
    assert haproxy_module.frontends(CONFIG) == {LISTENER_ID: "HTTP", "tls-listener": "TERMINATED_HTTPS"}
    assert haproxy_module.frontends(b"frontend plain\n    bind :1\n") == {"plain": "TCP"}
