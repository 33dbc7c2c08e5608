"""``keramos-agent``: options, and the gunicorn settings that make the API mutual-TLS only."""

from __future__ import annotations

import ssl

import pytest

from keramos.plugins import amphora_rest, compute_process
from keramos.plugins.agent import main


def write_config(tmp_path, **options: str) -> str:
    path = tmp_path / "agent.conf"
    path.write_text(
        "[amphora_agent]\n" + "".join(f"{name} = {value}\n" for name, value in options.items())
    )
    return str(path)


def test_gunicorn_requires_a_client_certificate_signed_by_the_client_ca(tmp_path):
    config = write_config(
        tmp_path,
        bind_host="127.0.0.1",
        bind_port="19443",
        server_cert="/etc/agent/server.pem",
        server_key="/etc/agent/server.key",
        client_ca="/etc/agent/client_ca.pem",
        state_dir=str(tmp_path / "state"),
        amphora_id="amp-7",
    )
    conf, config_file = main.build_conf(["--config-file", config])
    application = main.AgentApplication(conf, config_file)
    options = application.gunicorn_options()
    assert options["bind"] == ["127.0.0.1:19443"]
    assert options["certfile"] == "/etc/agent/server.pem"
    assert options["keyfile"] == "/etc/agent/server.key"
    assert options["ca_certs"] == "/etc/agent/client_ca.pem"
    assert options["cert_reqs"] == ssl.CERT_REQUIRED
    assert options["worker_class"] == "gthread" and options["keepalive"] > 0
    assert application.cfg.is_ssl and application.cfg.cert_reqs == ssl.CERT_REQUIRED
    assert application.settings.config_file == config
    assert (tmp_path / "state").is_dir()


def test_no_agent_opens_gunicorns_per_user_control_socket(tmp_path):
    config = write_config(
        tmp_path,
        server_cert="/etc/agent/server.pem",
        client_ca="/etc/agent/client_ca.pem",
        state_dir=str(tmp_path / "state"),
    )
    application = main.AgentApplication(*main.build_conf(["--config-file", config]))
    if "control_socket_disable" not in application.cfg.settings:
        pytest.skip("this gunicorn has no control socket")
    assert application.cfg.control_socket_disable is True


def test_ipv6_bind_host_is_bracketed(tmp_path):
    config = write_config(
        tmp_path,
        bind_host="::1",
        server_cert="/s.pem",
        client_ca="/c.pem",
        state_dir=str(tmp_path / "state"),
    )
    conf, config_file = main.build_conf(["--config-file", config])
    options = main.AgentApplication(conf, config_file).gunicorn_options()
    assert options["bind"] == ["[::1]:9443"]
    assert options["keyfile"] == "/s.pem"


def test_an_agent_without_tls_material_refuses_to_start(tmp_path):
    config = write_config(tmp_path, state_dir=str(tmp_path / "state"))
    conf, config_file = main.build_conf(["--config-file", config])
    with pytest.raises(SystemExit, match="server_cert, client_ca must be set"):
        main.AgentApplication(conf, config_file)


def test_the_tls_context_refuses_old_protocols():
    context = main.tls_context(None, lambda: ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize("module", [main, amphora_rest, compute_process])
def test_every_option_is_listed_with_help(module):
    groups = module.list_opts()
    assert groups
    for _group, opts in groups:
        for opt in opts:
            assert opt.help, opt.name
