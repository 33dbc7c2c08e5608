"""The local dual CA on real agents: create an amphora, rotate its certificate, fail a rotation.

The controller's client certificate and every amphora's server certificate come from the
``local`` generator; agents run as processes (``process`` compute driver) and are reached over
mutual TLS by the ``rest`` amphora driver. Needs haproxy: fails under CI=true when it is missing.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Iterator

import pytest
from cryptography import x509

from keramos.framework.config import make_conf
from keramos.framework.contracts import CertKind
from keramos.framework.errors import DriverError
from keramos.framework.files import write_atomic
from keramos.framework.pki.ca import create_dual_ca
from keramos.framework.pki.options import register_opts
from keramos.framework.records import AmphoraRecord, AmphoraStatus, CertificateRecord
from keramos.framework.testing import InProcessWorker
from keramos.plugins.amphora_rest import RestAmphoraDriver
from keramos.plugins.amphora_rest import list_opts as rest_list_opts
from keramos.plugins.certificates.generator import LocalCertGenerator
from keramos.plugins.certificates.local_store import LocalCertManager, local_store_opts
from keramos.plugins.compute_process import ProcessCompute
from keramos.plugins.compute_process import list_opts as process_list_opts
from tests.functional.agent_helpers import free_port, require_haproxy

AMPHORA_ID = "amp-certs-1"
PASSPHRASE = "agent test passphrase"


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> Iterator[InProcessWorker]:
    """A worker whose drivers are the local CA and store, process compute and rest amphora."""
    state_path = str(tmp_path_factory.mktemp("certs-agent"))
    ca_dir = os.path.join(state_path, "ca")
    create_dual_ca(ca_dir, PASSPHRASE.encode())
    conf = make_conf([], config_files=[], overrides={"DEFAULT": {"state_path": state_path}})
    register_opts(conf)
    conf.register_opts(local_store_opts, group="cert_manager_local")
    for group, opts in process_list_opts() + rest_list_opts():
        conf.register_opts(opts, group=group)
    conf.set_override("ca_dir", ca_dir, group="certificates")
    conf.set_override("ca_passphrase", PASSPHRASE, group="certificates")
    conf.set_override("passphrase", PASSPHRASE, group="cert_manager_local")
    generator = LocalCertGenerator(conf)
    controller = generator.issue("keramos-controller", CertKind.CLIENT)
    client_cert, client_key = (os.path.join(state_path, name) for name in ("client.pem", "client_key.pem"))
    write_atomic(client_cert, controller.certificate_pem)
    write_atomic(client_key, controller.private_key_pem)
    rest_options = {
        "controller_client_cert": client_cert,
        "controller_client_key": client_key,
        "server_ca": os.path.join(ca_dir, "server_ca.pem"),
        "connect_timeout": 2.0,
        "retries": 0,
        "backoff": 0.05,
    }
    for name, value in rest_options.items():
        conf.set_override(name, value, group="amphora_rest")
    conf.set_override("haproxy_binary", require_haproxy(), group="compute_process")
    drivers = {
        "cert_generator": generator,
        "cert_manager": LocalCertManager(conf),
        "compute": ProcessCompute(conf),
        "amphora": RestAmphoraDriver(conf),
    }
    overrides = {"amphora": {"active_timeout": 30.0, "agent_timeout": 30.0}}
    with InProcessWorker(conf_overrides=overrides, **drivers) as started:
        started.run("create_amphora", {"amphora_id": AMPHORA_ID, "image_id": "image-1"})
        amphora = started.state_store.get(AmphoraRecord, AMPHORA_ID)
        if amphora.agent_port is None:
            # create_amphora records the address only; process agents listen on their own ports.
            port = started.drivers.compute.get(amphora.compute_id).port
            started.state_store.update(AmphoraRecord, AMPHORA_ID, agent_port=port)
        yield started
        started.run("delete_amphora", {"amphora_id": AMPHORA_ID})


def served_serial(worker: InProcessWorker) -> str:
    """The serial of the certificate the agent serves, read in a mutual TLS handshake."""
    amphora = worker.state_store.get(AmphoraRecord, AMPHORA_ID)
    rest_conf = worker.drivers.amphora.conf.amphora_rest
    context = ssl.create_default_context(cafile=rest_conf.server_ca)
    context.load_cert_chain(rest_conf.controller_client_cert, rest_conf.controller_client_key)
    with socket.create_connection((amphora.address, amphora.agent_port), timeout=5) as plain:
        with context.wrap_socket(plain, server_hostname=AMPHORA_ID) as tls:
            der = tls.getpeercert(binary_form=True)
    return format(x509.load_der_x509_certificate(der).serial_number, "032x")


def active_serials(worker: InProcessWorker) -> list[str]:
    records = worker.state_store.find(CertificateRecord, amphora_id=AMPHORA_ID, status="active")
    return [record.serial for record in records]


def test_created_amphora_serves_the_certificate_the_local_ca_issued(worker):
    assert worker.state_store.get(AmphoraRecord, AMPHORA_ID).status == AmphoraStatus.READY
    assert active_serials(worker) == [served_serial(worker)]


def test_rotation_installs_the_new_certificate_on_the_agent(worker):
    [before] = active_serials(worker)
    result = worker.run("rotate_certificate", {"amphora_id": AMPHORA_ID})
    new_serial = result["issued_certificate"]["serial"]
    assert result["previous_serial"] == before
    assert active_serials(worker) == [new_serial]
    assert served_serial(worker) == new_serial


def test_rotation_that_cannot_reach_the_agent_keeps_the_old_certificate(worker):
    [before] = active_serials(worker)
    real_port = worker.state_store.get(AmphoraRecord, AMPHORA_ID).agent_port
    worker.state_store.update(AmphoraRecord, AMPHORA_ID, agent_port=free_port())
    try:
        with pytest.raises(DriverError):
            worker.run("rotate_certificate", {"amphora_id": AMPHORA_ID})
    finally:
        worker.state_store.update(AmphoraRecord, AMPHORA_ID, agent_port=real_port)
    assert active_serials(worker) == [before]
    assert served_serial(worker) == before
