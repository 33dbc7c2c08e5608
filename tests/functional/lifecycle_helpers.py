"""Drivers for lifecycle tests and benchmarks on real agents: local dual CA and store, process
compute, rest amphora driver, sharing one configuration."""

from __future__ import annotations

import os
from typing import Any

from keramos.framework.config import make_conf
from keramos.framework.contracts import CertKind
from keramos.plugins.amphora_rest import RestAmphoraDriver
from keramos.plugins.amphora_rest import list_opts as rest_list_opts
from keramos.plugins.certificates.ca import create_dual_ca
from keramos.plugins.certificates.files import write_atomic
from keramos.plugins.certificates.generator import LocalCertGenerator, register_opts
from keramos.plugins.certificates.local_store import LocalCertManager, local_store_opts
from keramos.plugins.compute_process import ProcessCompute
from keramos.plugins.compute_process import list_opts as process_list_opts
from tests.functional.agent_helpers import require_haproxy

PASSPHRASE = "lifecycle test passphrase"


def lifecycle_drivers(state_path: str) -> dict[str, Any]:
    """Local dual CA and store, process compute, rest amphora driver, sharing one configuration."""
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
    client_cert = os.path.join(state_path, "client.pem")
    client_key = os.path.join(state_path, "client_key.pem")
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
    return {
        "cert_generator": generator,
        "cert_manager": LocalCertManager(conf),
        "compute": ProcessCompute(conf),
        "amphora": RestAmphoraDriver(conf),
    }
