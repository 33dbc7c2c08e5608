"""The agent's activation by the controller and its own key in csr mode, through Flask's test
client (the TLS side is in tests/functional)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keramos.plugins.agent import main
from keramos.plugins.agent.identity import load_server_key, prepare_server_identity
from keramos.plugins.agent.options import AgentSettings
from keramos.plugins.agent.server import create_app
from tests.unit.test_agent_server import CONFIG, FAKE_HAPROXY

AMPHORA_ID = "amp-1"
TOKEN = "one-time-token-from-the-config-drive"


def _settings(tmp_path, **changes) -> AgentSettings:
    binary = tmp_path / "haproxy"
    binary.write_text(FAKE_HAPROXY)
    binary.chmod(0o700)
    token_file = tmp_path / "activation_token"
    token_file.write_text(TOKEN)
    config_file = tmp_path / "agent.conf"
    config_file.write_text("[amphora_agent]\nbind_port = 9443\n")
    settings = AgentSettings(
        state_dir=str(tmp_path / "state"),
        amphora_id=AMPHORA_ID,
        haproxy_binary=str(binary),
        server_cert=str(tmp_path / "server.pem"),
        config_file=str(config_file),
        activation_token_file=str(token_file),
    )
    return dataclasses.replace(settings, **changes)


@pytest.fixture
def settings(tmp_path) -> AgentSettings:
    return _settings(tmp_path)


@pytest.fixture
def csr_settings(tmp_path) -> AgentSettings:
    settings = _settings(
        tmp_path,
        certificate_mode="csr",
        server_cert=str(tmp_path / "state" / "amphora_server_cert.pem"),
        server_key=str(tmp_path / "state" / "amphora_server_key.pem"),
    )
    prepare_server_identity(AMPHORA_ID, settings.server_cert, settings.server_key)
    return settings


def push(client, version: str = "1"):
    return client.put(
        f"/1.0/loadbalancer/{AMPHORA_ID}/lb-1/haproxy", data=CONFIG, headers={"X-Config-Version": version}
    )


def test_an_unactivated_agent_answers_reads_and_refuses_every_change(settings):
    client = create_app(settings).test_client()
    assert client.get("/").status_code == 200
    info = client.get("/1.0/info").get_json()
    assert info["activated"] is False and info["amphora_id"] == AMPHORA_ID
    changes = [
        push(client),
        client.put("/1.0/loadbalancer/lb-1/start"),
        client.delete("/1.0/loadbalancer/lb-1"),
        client.put("/1.0/loadbalancer/lb-1/certificates/l.pem", data=b"x"),
        client.put("/1.0/config", data=b"[amphora_agent]\nworkers = 2\n"),
    ]
    for response in changes:
        assert response.status_code == 409, response.request.path
        assert response.get_json()["message"] == "Not activated"
        assert "not been activated by the controller" in response.get_json()["details"]
    assert client.get("/1.0/loadbalancer/lb-1/haproxy").status_code == 404
    assert client.put("/1.0/nothing").status_code == 404


def test_activation_hands_the_token_over_once_and_deletes_it(settings):
    client = create_app(settings).test_client()
    response = client.post("/1.0/activate")
    assert response.status_code == 200
    assert response.get_json() == {"amphora_id": AMPHORA_ID, "activation_token": TOKEN}
    assert not os.path.exists(settings.activation_token_file)
    assert client.get("/1.0/info").get_json()["activated"] is True
    assert push(client).status_code == 202
    again = client.post("/1.0/activate")
    assert again.status_code == 410
    assert TOKEN not in again.get_data(as_text=True)


def test_the_activation_survives_a_restart_of_the_agent(settings):
    assert create_app(settings).test_client().post("/1.0/activate").status_code == 200
    restarted = create_app(settings).test_client()
    assert restarted.get("/1.0/info").get_json()["activated"] is True
    assert push(restarted).status_code == 202
    assert restarted.post("/1.0/activate").status_code == 410


def test_an_activation_interrupted_before_the_token_was_deleted_stays_activated(settings):
    os.makedirs(settings.state_dir)
    open(os.path.join(settings.state_dir, "activated"), "w").close()
    client = create_app(settings).test_client()
    assert client.post("/1.0/activate").status_code == 410
    assert not os.path.exists(settings.activation_token_file)


def test_an_agent_booted_without_a_token_needs_no_activation(settings):
    client = create_app(dataclasses.replace(settings, activation_token_file=None)).test_client()
    assert client.get("/1.0/info").get_json()["activated"] is True
    assert push(client).status_code == 202
    assert client.post("/1.0/activate").status_code == 410
    assert os.path.exists(settings.activation_token_file)


def test_an_agent_whose_token_file_vanished_cannot_be_activated(settings):
    os.unlink(settings.activation_token_file)
    client = create_app(settings).test_client()
    assert client.post("/1.0/activate").status_code == 410
    assert push(client).status_code == 409


def _csr_of(client) -> tuple[x509.CertificateSigningRequest, str]:
    response = client.get("/1.0/csr")
    assert response.status_code == 200
    body = response.get_json()
    return x509.load_pem_x509_csr(body["csr"].encode()), body["activation_token"]


def _public_der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_csr_mode_makes_a_private_key_0600_and_a_bootstrap_certificate_naming_the_amphora(csr_settings):
    key = load_server_key(csr_settings.server_key)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert stat.S_IMODE(os.stat(csr_settings.server_key).st_mode) == 0o600
    with open(csr_settings.server_cert, "rb") as stream:
        bootstrap = x509.load_pem_x509_certificate(stream.read())
    assert bootstrap.issuer == bootstrap.subject
    assert _public_der(bootstrap.public_key()) == _public_der(key.public_key())
    san = bootstrap.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [AMPHORA_ID]


def test_the_csr_names_the_amphora_is_for_the_agent_key_and_comes_with_the_token(csr_settings):
    client = create_app(csr_settings).test_client()
    csr, token = _csr_of(client)
    assert token == TOKEN and csr.is_signature_valid
    assert [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [AMPHORA_ID]
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [AMPHORA_ID]
    assert _public_der(csr.public_key()) == _public_der(load_server_key(csr_settings.server_key).public_key())
    assert client.post("/1.0/activate").status_code == 200
    assert client.get("/1.0/csr").status_code == 410


def test_a_restarted_csr_agent_keeps_its_key_and_installed_certificate(csr_settings):
    with open(csr_settings.server_key, "rb") as stream:
        key_pem = stream.read()
    certificate = _signed(csr_settings, AMPHORA_ID)
    client = create_app(csr_settings).test_client()
    assert client.put("/1.0/certificate", data=certificate).status_code == 202
    prepare_server_identity(AMPHORA_ID, csr_settings.server_cert, csr_settings.server_key)
    with open(csr_settings.server_key, "rb") as stream:
        assert stream.read() == key_pem
    with open(csr_settings.server_cert, "rb") as stream:
        assert stream.read() == certificate


def test_a_controller_mode_agent_has_no_csr(settings):
    response = create_app(settings).test_client().get("/1.0/csr")
    assert response.status_code == 404 and response.get_json()["message"] == "No CSR"


def _signed(settings: AgentSettings, common_name: str, key=None) -> bytes:
    """A certificate signed by a throw-away CA for the agent's key (or ``key``'s)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test server CA")])
    public = (key or load_server_key(settings.server_key)).public_key()
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def test_a_certificate_alone_for_the_held_key_is_installed_before_activation(csr_settings):
    client = create_app(csr_settings).test_client()
    with open(csr_settings.server_key, "rb") as stream:
        key_pem = stream.read()
    certificate = _signed(csr_settings, AMPHORA_ID)
    assert client.put("/1.0/certificate", data=certificate).status_code == 202
    with open(csr_settings.server_cert, "rb") as stream:
        assert stream.read() == certificate
    with open(csr_settings.server_key, "rb") as stream:
        assert stream.read() == key_pem
    assert client.get("/1.0/info").get_json()["activated"] is False


def test_a_certificate_for_another_key_or_amphora_is_refused(csr_settings):
    client = create_app(csr_settings).test_client()
    with open(csr_settings.server_cert, "rb") as stream:
        bootstrap = stream.read()
    other_key = _signed(csr_settings, AMPHORA_ID, key=ec.generate_private_key(ec.SECP256R1()))
    response = client.put("/1.0/certificate", data=other_key)
    assert response.status_code == 400
    assert response.get_json()["details"] == "the certificate does not certify the key this agent holds"
    response = client.put("/1.0/certificate", data=_signed(csr_settings, "amp-2"))
    assert response.status_code == 400 and "does not name amp-1" in response.get_json()["details"]
    with open(csr_settings.server_cert, "rb") as stream:
        assert stream.read() == bootstrap


def test_a_new_key_from_outside_is_refused_before_activation(csr_settings):
    client = create_app(csr_settings).test_client()
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    response = client.put("/1.0/certificate", data=_signed(csr_settings, AMPHORA_ID, key=key) + key_pem)
    assert response.status_code == 409 and response.get_json()["message"] == "Not activated"


def _write_config(tmp_path, **options: str) -> str:
    path = tmp_path / "agent.conf"
    path.write_text("[amphora_agent]\n" + "".join(f"{name} = {value}\n" for name, value in options.items()))
    return str(path)


def test_a_csr_mode_agent_makes_its_key_before_gunicorn_loads_it(tmp_path):
    config = _write_config(
        tmp_path,
        certificate_mode="csr",
        amphora_id=AMPHORA_ID,
        client_ca="/etc/agent/client_ca.pem",
        state_dir=str(tmp_path / "state"),
    )
    conf, config_file = main.build_conf(["--config-file", config])
    options = main.AgentApplication(conf, config_file).gunicorn_options()
    assert options["certfile"] == str(tmp_path / "state" / "amphora_server_cert.pem")
    assert options["keyfile"] == str(tmp_path / "state" / "amphora_server_key.pem")
    assert os.path.exists(options["certfile"]) and os.path.exists(options["keyfile"])


def test_a_csr_mode_agent_needs_its_amphora_id(tmp_path):
    config = _write_config(
        tmp_path, certificate_mode="csr", client_ca="/c.pem", state_dir=str(tmp_path / "state")
    )
    conf, config_file = main.build_conf(["--config-file", config])
    with pytest.raises(SystemExit, match="amphora_id must be set in csr certificate_mode"):
        main.AgentApplication(conf, config_file)
