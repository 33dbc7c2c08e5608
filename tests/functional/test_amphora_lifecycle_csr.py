"""Activation and csr mode on real agents: process compute, rest amphora driver over mutual TLS,
local dual CA and store, HAProxy. Needs haproxy: fails under CI=true when it is missing.

In both certificate modes the controller activates the agent (the token file is gone afterwards
and a second activation is refused); in csr mode the agent's key stays on the amphora and the
certificate it serves is signed by the server CA.
"""

from __future__ import annotations

import os
import socket
import ssl
import stat
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keramos.framework.contracts import AmphoraEndpoint
from keramos.framework.pki.ca import serial_hex
from keramos.framework.records import AmphoraRecord, AmphoraStatus, CertificateRecord
from keramos.framework.testing import InProcessWorker
from keramos.plugins.agent.identity import ACTIVATED_MARKER
from keramos.plugins.agent.options import CSR_MODE_KEY_NAME
from keramos.plugins.amphora_rest import AgentError
from keramos.plugins.compute_process import ProcessCompute
from tests.functional.agent_helpers import free_port, http_backend
from tests.functional.lifecycle_helpers import BODY, description, lifecycle_worker, wait_for_traffic


def _worker(tmp_path, mode: str) -> Iterator[InProcessWorker]:
    with lifecycle_worker(tmp_path, certificate_mode=mode) as worker:
        yield worker


@pytest.fixture
def csr_worker(tmp_path) -> Iterator[InProcessWorker]:
    yield from _worker(tmp_path, "csr")


@pytest.fixture(params=["controller", "csr"])
def any_worker(tmp_path, request) -> Iterator[InProcessWorker]:
    yield from _worker(tmp_path, request.param)


def endpoint_of(amphora: dict) -> AmphoraEndpoint:
    return AmphoraEndpoint(amphora["amphora_id"], amphora["address"], amphora["agent_port"])


def instance_dir(worker: InProcessWorker, compute_id: str) -> str:
    compute: ProcessCompute = worker.drivers.compute
    return os.path.join(compute.instances_dir, compute_id)


def served_certificate(worker: InProcessWorker, endpoint: AmphoraEndpoint) -> x509.Certificate:
    """The certificate the agent serves, verified against the server CA for the amphora id."""
    rest = worker.drivers.amphora
    context = ssl.create_default_context(cafile=rest.server_ca)
    context.load_cert_chain(*rest.client_cert)
    with socket.create_connection((endpoint.address, endpoint.port), timeout=5) as plain:
        with context.wrap_socket(plain, server_hostname=endpoint.amphora_id) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def public_pem(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_the_agent_is_activated_once_by_the_controller_in_both_modes(any_worker):
    created = any_worker.run("create_amphora", {"amphora_id": "act-1", "image_id": "image-1"})["amphora"]
    assert created["status"] == AmphoraStatus.READY and created["activation_token_hash"] is None
    directory = instance_dir(any_worker, created["compute_id"])
    assert not os.path.exists(os.path.join(directory, "activation_token"))
    assert os.path.exists(os.path.join(directory, "state", ACTIVATED_MARKER))
    endpoint = endpoint_of(created)
    assert any_worker.drivers.amphora.get_info(endpoint)["activated"] is True
    with pytest.raises(AgentError) as refused:
        any_worker.drivers.amphora.activate(endpoint)
    assert refused.value.status == 410


def test_csr_mode_amphora_keeps_its_key_and_serves_a_certificate_from_the_server_ca(csr_worker, tmp_path):
    listener_port = free_port()
    with http_backend(BODY) as backend_port:
        lb = {"lb_id": "lb-csr", **description(listener_port, backend_port)}
        created = csr_worker.run("create_amphora", {"amphora_id": "csr-1", "image_id": "image-1", "lb": lb})
        amphora = created["amphora"]
        assert amphora["status"] == AmphoraStatus.READY
        wait_for_traffic(listener_port)

    directory = instance_dir(csr_worker, amphora["compute_id"])
    assert sorted(name for name in os.listdir(directory) if name.endswith(".pem")) == ["client_ca_cert.pem"]
    key_path = os.path.join(directory, "state", CSR_MODE_KEY_NAME)
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    with open(key_path, "rb") as stream:
        agent_key = serialization.load_pem_private_key(stream.read(), password=None)

    certificate = served_certificate(csr_worker, endpoint_of(amphora))
    assert public_pem(certificate.public_key()) == public_pem(agent_key.public_key())
    assert [a.value for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["csr-1"]
    (record,) = csr_worker.state_store.find(CertificateRecord, amphora_id="csr-1")
    assert record.serial == amphora["cert_serial"] == serial_hex(certificate.serial_number)
    bundle = csr_worker.drivers.cert_manager.get(record.cert_ref)
    assert bundle.private_key is None
    assert x509.load_pem_x509_certificate(bundle.certificate) == certificate

    other_key = public_pem(ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(AgentError, match="proved another server key"):
        csr_worker.drivers.amphora.install_signed_certificate(endpoint_of(amphora), bundle.certificate, other_key)

    key_der = agent_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_pem = agent_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    instances = csr_worker.drivers.compute.instances_dir
    for root, _dirs, files in os.walk(tmp_path):
        if os.path.commonpath([root, instances]) == instances:
            continue
        for name in files:
            with open(os.path.join(root, name), "rb") as stream:
                content = stream.read()
            assert key_der not in content and key_pem.strip() not in content, os.path.join(root, name)


def test_csr_mode_failover_certifies_the_replacement_key_and_traffic_returns(csr_worker):
    listener_port = free_port()
    with http_backend(BODY) as backend_port:
        lb = {"lb_id": "lb-csr-fo", **description(listener_port, backend_port)}
        csr_worker.run("create_amphora", {"amphora_id": "csr-2", "image_id": "image-1", "lb": lb})
        wait_for_traffic(listener_port)
        result = csr_worker.run("failover_amphora", {"amphora_id": "csr-2"})
        new = result["amphora"]
        assert result["moved_loadbalancers"] == ["lb-csr-fo"] and new["status"] == AmphoraStatus.READY
        wait_for_traffic(listener_port)
    assert csr_worker.state_store.get(AmphoraRecord, "csr-2").status == AmphoraStatus.DELETED
    certificate = served_certificate(csr_worker, endpoint_of(new))
    assert serial_hex(certificate.serial_number) == new["cert_serial"]
    assert [c.amphora_id for c in csr_worker.state_store.find(CertificateRecord)] == [new["amphora_id"]]
