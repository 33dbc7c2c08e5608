"""keramos-proxy between the REST driver and a real agent, on loopback (no root needed).

The agent's mutual TLS runs end to end inside the tunnel; the proxy refuses networks outside its
allow-list, routes whose signature does not verify and controllers without a proxy CA
certificate.
"""

from __future__ import annotations

import dataclasses
import socket
import ssl

import pytest

from keramos.framework.agent_protocol.proxy import Route, connect_headers
from keramos.framework.contracts import AmphoraEndpoint
from keramos.plugins.amphora_rest import AgentError
from tests.functional.agent_helpers import boot, free_port, make_drivers, make_pki
from tests.functional.proxy_helpers import make_proxy_pki, proxy_config, running_proxy

NETWORK = "tenant-a"
CONFIG = """global
    daemon
defaults
    mode http
    timeout connect 5s
    timeout client 5s
    timeout server 5s
frontend web
    bind 127.0.0.1:{port}
    http-request return status 200 content-type text/plain string "amphora"
"""


@pytest.fixture
def proxied(tmp_path):
    """An agent on loopback, a proxy serving NETWORK, a REST driver that knows both."""
    pki = make_pki(str(tmp_path))
    proxy_pki = make_proxy_pki(str(tmp_path / "proxy-ca"))
    compute, driver = make_drivers(str(tmp_path / "state"), pki)
    for name, value in proxy_pki.rest_overrides().items():
        driver.conf.set_override(name, value, group="amphora_rest")
    port = free_port()
    config = proxy_config(proxy_pki, host="127.0.0.1", port=port, networks={NETWORK: None})
    try:
        with running_proxy(str(tmp_path / "proxy"), config, host="127.0.0.1", port=port) as proxy:
            _, direct = boot(compute, pki, "amp-1")
            endpoint = dataclasses.replace(direct, proxy=proxy.address, network_id=NETWORK)
            yield driver, endpoint, proxy, proxy_pki, tmp_path
    finally:
        driver.close()
        compute.close()


def test_the_agent_answers_through_the_proxy(proxied):
    driver, endpoint, _, _, _ = proxied
    info = driver.wait_until_reachable(endpoint, 20)
    assert info["amphora_id"] == "amp-1"
    listener = free_port()
    driver.upload_config(endpoint, "lb-1", CONFIG.format(port=listener), 1)
    assert driver.get_config(endpoint, "lb-1") == (CONFIG.format(port=listener), 1)
    assert driver.get_info(endpoint)["loadbalancers"]["lb-1"]["running_version"] == 1


def test_a_network_outside_the_allow_list_is_refused_and_logged(proxied):
    driver, endpoint, proxy, _, _ = proxied
    elsewhere = dataclasses.replace(endpoint, network_id="tenant-z")
    with pytest.raises(AgentError, match="refused the route: 403 network tenant-z is not served"):
        driver.get_info(elsewhere)
    assert "network tenant-z is not served by this proxy" in proxy.log()


def test_a_route_signed_with_another_key_is_refused(proxied):
    driver, endpoint, proxy, _, _ = proxied
    driver.conf.set_override("proxy_route_key", "not the shared key", group="amphora_rest")
    driver.close()
    with pytest.raises(AgentError, match="refused the route: 403 route signature does not verify"):
        driver.get_info(endpoint)
    assert "route signature does not verify" in proxy.log()


def _tunnel_request(proxy, proxy_pki, headers: dict[str, str], target: str) -> bytes:
    context = ssl.create_default_context(cafile=proxy_pki.path("proxy_ca.pem"))
    context.check_hostname = False
    context.load_cert_chain(proxy_pki.path("controller/cert.pem"), proxy_pki.path("controller/key.pem"))
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as raw:
        with context.wrap_socket(raw) as tls:
            head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
            head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            tls.sendall((head + "\r\n").encode())
            return tls.recv(4096)


def test_a_route_edited_after_signing_is_refused(proxied):
    _, endpoint, proxy, proxy_pki, _ = proxied
    signed = Route(NETWORK, endpoint.address, endpoint.port, "amp-1")
    headers = connect_headers(signed, "route key shared by controller and proxies")
    # The same signature, another target: the signature covers the address and port too.
    answer = _tunnel_request(proxy, proxy_pki, headers, f"{endpoint.address}:{endpoint.port + 1}")
    assert answer.startswith(b"HTTP/1.1 403 route signature does not verify")


def test_a_controller_without_a_proxy_ca_certificate_is_refused(proxied):
    _, _, proxy, proxy_pki, tmp_path = proxied
    (tmp_path / "other").mkdir()
    pki = make_pki(str(tmp_path / "other"))
    context = ssl.create_default_context(cafile=proxy_pki.path("proxy_ca.pem"))
    context.check_hostname = False
    # The amphora client CA's controller certificate is not the proxy CA's: refused.
    context.load_cert_chain(pki.path("controller_client_cert.pem"), pki.path("controller_client_key.pem"))
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with context.wrap_socket(raw) as tls:
                tls.sendall(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n")
                assert tls.recv(4096) == b""
                raise ConnectionError("closed without an answer")


def test_the_agent_still_checks_the_controller_certificate_inside_the_tunnel(proxied):
    driver, endpoint, _, _, tmp_path = proxied
    (tmp_path / "stranger").mkdir()
    stranger = make_pki(str(tmp_path / "stranger"))
    driver.wait_until_reachable(endpoint, 20)
    for name in ("controller_client_cert", "controller_client_key"):
        driver.conf.set_override(name, stranger.path(f"{name}.pem"), group="amphora_rest")
    other = type(driver)(driver.conf)
    try:
        with pytest.raises(AgentError, match="TLS failure"):
            other.request(AmphoraEndpoint(**dataclasses.asdict(endpoint)), "GET", "/1.0/info", retries=0)
    finally:
        other.close()


def test_tunnels_send_without_waiting_for_acknowledgements(proxied):
    """A push is a request head and a body, two writes inside the tunnel: with Nagle's algorithm
    on, the body would wait for the proxy's delayed ACK (about 40 ms per push)."""
    driver, endpoint, _, _, _ = proxied
    driver.wait_until_reachable(endpoint, 20)
    driver.upload_config(endpoint, "lb-1", CONFIG.format(port=free_port()), 1)
    adapter = driver.session(endpoint).get_adapter("https://")
    [manager] = adapter.proxy_manager.values()
    connections = [manager.pools[key].pool.get() for key in manager.pools.keys()]
    tunnel = connections[0].sock.socket
    assert tunnel.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_an_agent_not_listening_yet_is_a_retryable_502(proxied):
    driver, endpoint, proxy, _, _ = proxied
    silent = dataclasses.replace(endpoint, amphora_id="amp-booting", port=free_port())
    with pytest.raises(AgentError, match="502 cannot reach 127.0.0.1") as raised:
        driver.request(silent, "GET", "/1.0/info", retries=0)
    assert raised.value.retryable
    assert "cannot reach" in proxy.log()
