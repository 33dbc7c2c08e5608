"""The proxy's routing metadata and options: what is signed, what is refused, what is served."""

from __future__ import annotations

import dataclasses

import pytest
from oslo_config import cfg

from keramos.framework.agent_protocol.proxy import (
    Route,
    RouteRejected,
    connect_headers,
    parse_connect,
    sign_route,
    verify_route,
)
from keramos.framework.errors import ConfigError
from keramos.plugins.proxy.main import build_conf, main
from keramos.plugins.proxy.options import ProxySettings, parse_networks
from keramos.plugins.proxy.server import TunnelServer

KEY = b"shared route key"
ROUTE = Route("tenant-a", "10.0.0.2", 9443, "amp-1")


def head(route: Route, headers: dict[str, str]) -> bytes:
    lines = [f"CONNECT {route.target} HTTP/1.1", f"Host: {route.target}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_signed_connect_request_gives_back_its_route():
    route, signature = parse_connect(head(ROUTE, connect_headers(ROUTE, KEY)))
    assert route == ROUTE
    verify_route(route, signature, KEY)


@pytest.mark.parametrize(
    "field, value",
    [("network_id", "tenant-b"), ("address", "10.0.0.3"), ("port", 9444), ("amphora_id", "amp-2")],
)
def test_every_routing_field_is_covered_by_the_signature(field, value):
    edited = dataclasses.replace(ROUTE, **{field: value})
    with pytest.raises(RouteRejected, match="does not verify") as refused:
        verify_route(edited, sign_route(ROUTE, KEY), KEY)
    assert refused.value.status == 403


def test_a_signature_under_another_key_is_refused():
    with pytest.raises(RouteRejected, match="does not verify"):
        verify_route(ROUTE, sign_route(ROUTE, b"another key"), KEY)


@pytest.mark.parametrize(
    "request_head, reason",
    [
        (b"GET / HTTP/1.1\r\n\r\n", "only CONNECT is served"),
        (b"CONNECT host.example:9443 HTTP/1.1\r\n\r\n", "not an IP address"),
        (b"CONNECT 10.0.0.2 HTTP/1.1\r\n\r\n", "not address:port"),
        (b"CONNECT 10.0.0.2:9443 HTTP/1.1\r\n\r\n", "without the X-Keramos-Network header"),
        (b"CONNECT 10.0.0.2:9443 HTTP/1.1\r\nbroken\r\n\r\n", "malformed header line"),
        ("CONNECT 10.0.0.2:9443 HTTP/1.1\r\nX: \u00e9\r\n\r\n".encode(), "not ASCII"),
    ],
)
def test_malformed_requests_are_refused_with_400(request_head, reason):
    with pytest.raises(RouteRejected, match=reason) as refused:
        parse_connect(request_head)
    assert refused.value.status == 400


def test_a_network_id_must_be_an_identifier():
    headers = {**connect_headers(ROUTE, KEY), "X-Keramos-Network": "../etc"}
    with pytest.raises(RouteRejected, match="not an identifier"):
        parse_connect(head(ROUTE, headers))


def test_networks_map_to_their_namespaces():
    assert parse_networks(["tenant-a:ns-a", "tenant-b:", "local"]) == {
        "tenant-a": "ns-a", "tenant-b": None, "local": None,
    }
    with pytest.raises(ConfigError, match="listed twice"):
        parse_networks(["a:x", "a:y"])
    with pytest.raises(ConfigError, match="not NETWORK_ID:NAMESPACE"):
        parse_networks(["/bad:x"])


def _settings(**changes) -> ProxySettings:
    values = dict(
        bind_host="127.0.0.1", bind_port=0, server_cert="c", server_key=None, proxy_ca="ca",
        route_key=KEY, networks={"tenant-a": None}, connect_timeout=1.0, heartbeat_port=0,
        heartbeat_bind_host="0.0.0.0", heartbeat_upstreams=(),
    )
    values.update(changes)
    return ProxySettings(**values)


def test_only_networks_of_the_allow_list_are_routed():
    server = TunnelServer(_settings(), {"tenant-a": object()})
    assert server.route_for(head(ROUTE, connect_headers(ROUTE, KEY))) == ROUTE
    elsewhere = dataclasses.replace(ROUTE, network_id="tenant-z")
    with pytest.raises(RouteRejected, match="network tenant-z is not served") as refused:
        server.route_for(head(elsewhere, connect_headers(elsewhere, KEY)))
    assert refused.value.status == 403


def test_the_signature_is_checked_before_the_allow_list():
    """A caller without the key learns nothing of which networks a proxy serves."""
    server = TunnelServer(_settings(), {"tenant-a": object()})
    elsewhere = dataclasses.replace(ROUTE, network_id="tenant-z")
    with pytest.raises(RouteRejected, match="does not verify"):
        server.route_for(head(elsewhere, connect_headers(elsewhere, b"guess")))


def _conf(tmp_path, text: str) -> cfg.ConfigOpts:
    path = tmp_path / "proxy.conf"
    path.write_text(text)
    return build_conf(["--config-file", str(path)])


def test_settings_need_certificates_networks_and_a_route_key(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    base = f"[proxy]\nserver_cert = {cert}\nproxy_ca = {cert}\n"
    with pytest.raises(ConfigError, match="networks is empty"):
        ProxySettings.from_conf(_conf(tmp_path, base))
    with pytest.raises(ConfigError, match="route_key .* must be set"):
        ProxySettings.from_conf(_conf(tmp_path, base + "networks = a:\n"))
    with pytest.raises(ConfigError, match="heartbeat_upstreams is empty"):
        ProxySettings.from_conf(_conf(tmp_path, base + "networks = a:\nroute_key = k\nheartbeat_port = 5555\n"))
    settings = ProxySettings.from_conf(_conf(tmp_path, base + "networks = a:ns-a\nroute_key = k\n"))
    assert settings.networks == {"a": "ns-a"} and settings.route_key == b"k"


def test_the_program_reports_a_bad_configuration_in_one_line(tmp_path, capsys):
    path = tmp_path / "proxy.conf"
    path.write_text("[proxy]\nnetworks = a:\n")
    assert main(["--config-file", str(path)]) == 2
    assert capsys.readouterr().err == "keramos-proxy: cannot start: [proxy] server_cert must be set\n"


def test_a_missing_namespace_is_a_configuration_error():
    from keramos.plugins.proxy.netns import NamespaceSockets

    with pytest.raises(ConfigError, match="network namespace 'keramos-no-such-ns' does not exist"):
        NamespaceSockets("keramos-no-such-ns")
