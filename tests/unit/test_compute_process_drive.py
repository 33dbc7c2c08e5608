"""How the process compute driver reads a config drive: controller-made key, csr mode, token."""

from __future__ import annotations

import pytest

from keramos.framework.errors import DriverError
from keramos.plugins.compute_process import _classify
from tests.functional.agent_helpers import make_ca

CLIENT_CA = make_ca("client CA").cert_pem
CERT = b"-----BEGIN CERTIFICATE-----\nnot parsed\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nkey\n-----END PRIVATE KEY-----\n"


def test_a_drive_with_the_server_certificate_and_key_and_a_token():
    roles = _classify({"ca.pem": CLIENT_CA, "s.pem": CERT, "k.pem": KEY, "activation_token": b"t"})
    assert roles == {
        "client_ca": "ca.pem",
        "server_cert": "s.pem",
        "server_key": "k.pem",
        "activation_token": "activation_token",
    }


def test_a_drive_without_server_certificate_nor_key_is_csr_mode():
    assert _classify({"ca.pem": CLIENT_CA, "activation_token": b"t"}) == {
        "client_ca": "ca.pem",
        "activation_token": "activation_token",
    }


@pytest.mark.parametrize(
    ("drive", "missing"),
    [({"ca.pem": CLIENT_CA, "s.pem": CERT}, "server_key"), ({"s.pem": CERT, "k.pem": KEY}, "client_ca")],
)
def test_a_drive_with_half_a_server_identity_or_no_client_ca_is_refused(drive, missing):
    with pytest.raises(DriverError, match=f"config drive lacks {missing}"):
        _classify(drive)


def _process_conf(tmp_path, **options):
    from keramos.framework.config import make_conf
    from keramos.plugins.compute_process import list_opts

    conf = make_conf([], config_files=[], overrides={"DEFAULT": {"state_path": str(tmp_path)}})
    for group, opts in list_opts():
        conf.register_opts(opts, group=group)
    conf.set_override("haproxy_binary", "true", group="compute_process")
    for name, value in options.items():
        conf.set_override(name, value, group="compute_process")
    return conf


def test_networks_in_namespaces_need_the_proxy_that_reaches_them(tmp_path):
    from keramos.framework.errors import ConfigError
    from keramos.plugins.compute_process import ProcessCompute

    with pytest.raises(ConfigError, match=r"\[compute_process\] networks is set but proxy is not"):
        ProcessCompute(_process_conf(tmp_path, networks=["tenant-a:ns-a"]))


def test_an_amphora_on_a_network_without_its_namespace_is_not_built(tmp_path):
    from keramos.framework.errors import ConfigError
    from keramos.plugins.compute_process import ProcessCompute

    compute = ProcessCompute(
        _process_conf(tmp_path, networks=["tenant-a:keramos-absent-ns"], proxy="192.0.2.1:9444")
    )
    drive = {"ca.pem": CLIENT_CA, "activation_token": b"t"}
    with pytest.raises(ConfigError, match="network namespace 'keramos-absent-ns' does not exist"):
        compute.build("amp-1", "image", drive, network_id="tenant-a")
    assert compute.running_instances() == []
    compute.close()
