"""The agent API through Flask's test client, with a stand-in for ``haproxy -c``.

The stand-in accepts any configuration without the word ``bogus``; the real HAProxy is exercised
by the functional tests.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
from collections.abc import Iterator

import flask.testing
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keramos.plugins.agent import haproxy as haproxy_module
from keramos.plugins.agent.options import AgentSettings
from keramos.plugins.agent.server import create_app

AMPHORA_ID = "amp-1"
LB_ID = "lb-1"
CONFIG = b"global\n    maxconn 10\n"
FAKE_HAPROXY = f"""#!{sys.executable}
import sys
args = sys.argv[1:]
if args == ["-v"]:
    print("HAProxy version 9.9.9-fake 2026/01/01 - https://haproxy.org/")
    sys.exit(0)
if args[:2] == ["-c", "-f"]:
    if "bogus" in open(args[2]).read():
        print("[ALERT] config : parsing [" + args[2] + ":3] : unknown keyword 'bogus'", file=sys.stderr)
        sys.exit(1)
    print("Configuration file is valid")
    sys.exit(0)
sys.exit(2)
"""
def _self_signed_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "listener")])
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


PEM_CERT = _self_signed_pem()


@pytest.fixture
def settings(tmp_path) -> AgentSettings:
    binary = tmp_path / "haproxy"
    binary.write_text(FAKE_HAPROXY)
    binary.chmod(0o700)
    config_file = tmp_path / "agent.conf"
    config_file.write_text("[amphora_agent]\nbind_port = 9443\n")
    return AgentSettings(
        state_dir=str(tmp_path / "state"),
        amphora_id=AMPHORA_ID,
        haproxy_binary=str(binary),
        max_config_bytes=4096,
        max_certificate_bytes=2048,
        server_cert=str(tmp_path / "server.pem"),
        config_file=str(config_file),
    )


@pytest.fixture
def client(settings) -> Iterator[flask.testing.FlaskClient]:
    yield create_app(settings).test_client()


def push(client, config: bytes = CONFIG, version: str | None = "1", lb_id: str = LB_ID, amphora_id: str = AMPHORA_ID):
    headers = {} if version is None else {"X-Config-Version": version}
    return client.put(f"/1.0/loadbalancer/{amphora_id}/{lb_id}/haproxy", data=config, headers=headers)


def assert_json_error(response, status: int) -> dict:
    assert response.status_code == status
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["message"]
    return body


def test_version_discovery_answers_the_api_version(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.get_json() == {"api_version": "1.0"}


def test_unknown_path_is_a_json_404(client):
    body = assert_json_error(client.get("/1.0/nothing-here"), 404)
    assert body["message"] == "Not Found"


def test_wrong_method_is_a_json_405_with_allow(client):
    response = client.post("/1.0/info")
    assert_json_error(response, 405)
    assert "GET" in response.headers["Allow"]


def test_pushed_config_reads_back_with_its_version_and_etag(client):
    response = push(client)
    assert response.status_code == 202
    etag = response.headers["ETag"]
    read = client.get(f"/1.0/loadbalancer/{LB_ID}/haproxy")
    assert read.status_code == 200
    assert read.mimetype == "text/plain"
    assert read.data == CONFIG
    assert read.headers["ETag"] == etag
    assert read.headers["X-Config-Version"] == "1"
    info = client.get("/1.0/info").get_json()
    assert info["amphora_id"] == AMPHORA_ID
    assert info["haproxy_version"] == "9.9.9-fake"
    assert info["loadbalancers"][LB_ID]["config_version"] == 1
    assert info["loadbalancers"][LB_ID]["running"] is False


def test_invalid_config_is_refused_with_haproxy_output_and_keeps_the_old_one(client, settings):
    push(client)
    body = assert_json_error(push(client, b"global\n    bogus\n", "2"), 400)
    assert "unknown keyword 'bogus'" in body["details"]
    assert client.get(f"/1.0/loadbalancer/{LB_ID}/haproxy").data == CONFIG
    assert client.get("/1.0/info").get_json()["loadbalancers"][LB_ID]["config_version"] == 1
    lb_dir = os.path.join(settings.state_dir, "loadbalancers", LB_ID)
    assert not [name for name in os.listdir(lb_dir) if name.startswith(".haproxy-")]


def test_older_version_is_refused_with_409(client):
    assert push(client, CONFIG + b"# v5\n", "5").status_code == 202
    body = assert_json_error(push(client, CONFIG + b"# v4\n", "4"), 409)
    assert "already has version 5" in body["details"]
    assert client.get(f"/1.0/loadbalancer/{LB_ID}/haproxy").data == CONFIG + b"# v5\n"


def test_same_version_is_idempotent_only_with_the_same_content(client):
    assert push(client, CONFIG, "3").status_code == 202
    again = push(client, CONFIG, "3")
    assert again.status_code == 202
    assert "already installed" in again.get_json()["details"]
    assert_json_error(push(client, CONFIG + b"# other\n", "3"), 409)


@pytest.mark.parametrize("version", ["zero", "0", "-1", "1.5", "2a", "\u00b2", ""])
def test_a_pushed_version_must_be_a_positive_integer(client, version):
    body = assert_json_error(push(client, version=version), 400)
    assert "X-Config-Version" in body["details"]


def test_push_for_another_amphora_is_refused(client):
    assert_json_error(push(client, amphora_id="amp-2"), 400)
    assert_json_error(client.get(f"/1.0/loadbalancer/{LB_ID}/haproxy"), 404)


@pytest.mark.parametrize("lb_id", ["..", ".hidden", "a%20b", "-x", "x" * 200])
def test_unsafe_load_balancer_ids_are_refused(client, lb_id):
    response = push(client, lb_id=lb_id)
    assert response.status_code in (400, 404)
    assert response.mimetype == "application/json"


def test_oversized_body_is_refused_with_413_and_stores_nothing(client):
    assert_json_error(push(client, b"#" * 5000), 413)
    assert_json_error(client.get(f"/1.0/loadbalancer/{LB_ID}/haproxy"), 404)


@pytest.mark.parametrize(
    "filename",
    ["..", "...pem", ".hidden.pem", "cert.txt", "..%2F..%2Fescape.pem", "a%00.pem", "-x.pem"],
)
def test_certificate_filename_traversal_is_refused(client, settings, filename):
    response = client.put(f"/1.0/loadbalancer/{LB_ID}/certificates/{filename}", data=PEM_CERT)
    assert response.status_code in (400, 404)
    assert response.mimetype == "application/json"
    written = [
        os.path.join(root, name)
        for root, _dirs, names in os.walk(os.path.dirname(settings.state_dir))
        for name in names
        if name.endswith(".pem")
    ]
    assert written == []


def test_listener_certificate_is_stored_0600_and_reported_by_md5(client, settings):
    response = client.put(f"/1.0/loadbalancer/{LB_ID}/certificates/listener.pem", data=PEM_CERT)
    assert response.status_code == 200
    path = os.path.join(settings.state_dir, "loadbalancers", LB_ID, "certificates", "listener.pem")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    md5 = client.get(f"/1.0/loadbalancer/{LB_ID}/certificates/listener.pem").get_json()["md5sum"]
    assert md5 == haproxy_module.config_etag(PEM_CERT)
    assert client.delete(f"/1.0/loadbalancer/{LB_ID}/certificates/listener.pem").status_code == 200
    assert not os.path.exists(path)
    assert_json_error(client.get(f"/1.0/loadbalancer/{LB_ID}/certificates/listener.pem"), 404)


def test_listener_certificate_must_be_pem(client):
    body = assert_json_error(
        client.put(f"/1.0/loadbalancer/{LB_ID}/certificates/listener.pem", data=b"not a pem"), 400
    )
    assert "PEM" in body["details"]


def test_server_certificate_garbage_is_refused_and_nothing_written(client, settings):
    assert_json_error(client.put("/1.0/certificate", data=b"garbage"), 400)
    assert not os.path.exists(settings.server_cert)


def test_agent_config_update_accepts_known_options_only(client, settings):
    good = b"[amphora_agent]\nbind_port = 9444\nthreads = 4\n"
    assert client.put("/1.0/config", data=good).status_code == 202
    with open(settings.config_file, "rb") as stream:
        assert stream.read() == good
    assert stat.S_IMODE(os.stat(settings.config_file).st_mode) == 0o600
    body = assert_json_error(client.put("/1.0/config", data=b"[amphora_agent]\nrm_rf = 1\n"), 400)
    assert "rm_rf" in body["details"]
    assert_json_error(client.put("/1.0/config", data=b"[DEFAULT]\nx = 1\n[other]\ny = 2\n"), 400)
    with open(settings.config_file, "rb") as stream:
        assert stream.read() == good


def test_actions_on_unknown_load_balancer_or_unknown_action(client):
    assert_json_error(client.put(f"/1.0/loadbalancer/{LB_ID}/start"), 404)
    push(client)
    body = assert_json_error(client.put(f"/1.0/loadbalancer/{LB_ID}/explode"), 400)
    assert "Unknown action" in body["details"]


def test_unexpected_failure_is_a_json_500(client, monkeypatch):
    def broken(_self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(haproxy_module.HaproxyManager, "loadbalancers", broken)
    body = assert_json_error(client.get("/1.0/info"), 500)
    assert "disk on fire" in body["details"]


def test_haproxy_is_only_ever_run_with_argument_lists(client, monkeypatch):
    calls = []
    real_run = subprocess.run

    def recording_run(args, *rest, **kwargs):
        calls.append((args, kwargs.get("shell", False)))
        return real_run(args, *rest, **kwargs)

    monkeypatch.setattr(haproxy_module.subprocess, "run", recording_run)
    push(client, b"global\n    bogus ; rm -rf /\n", "1")
    push(client, CONFIG, "2")
    client.get("/1.0/info")
    assert calls
    for args, shell in calls:
        assert isinstance(args, list) and shell is False


def test_details_add_load_memory_disk_and_process_count(client):
    push(client)
    details = client.get("/1.0/details").get_json()
    assert details["api_version"] == "1.0" and details["amphora_id"] == AMPHORA_ID
    assert len(details["load"]) == 3
    assert details["disk"]["available"] > 0
    assert details["haproxy_count"] == 0
    assert LB_ID in details["loadbalancers"]


def test_a_deleted_load_balancer_keeps_its_version_so_stale_pushes_stay_refused(client):
    push(client, CONFIG, "4")
    assert client.delete(f"/1.0/loadbalancer/{LB_ID}").status_code == 200
    assert_json_error(client.get(f"/1.0/loadbalancer/{LB_ID}/haproxy"), 404)
    assert client.get("/1.0/info").get_json()["loadbalancers"][LB_ID]["config_version"] == 4
    assert_json_error(push(client, CONFIG, "3"), 409)
    assert_json_error(push(client, CONFIG, "4"), 409)
    assert push(client, CONFIG, "5").status_code == 202
    assert client.delete("/1.0/loadbalancer/never-pushed").status_code == 200
