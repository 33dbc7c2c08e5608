"""Mutual TLS of a real agent process started by the process compute driver.

Only a client certificate signed by the client CA completes the handshake; the controller only
accepts an agent whose certificate, signed by the server CA, names the amphora id it called.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
from collections.abc import Iterator

import pytest
import requests

from keramos.framework.contracts import AmphoraEndpoint
from keramos.plugins.amphora_rest import AgentError, RestAmphoraDriver
from keramos.plugins.compute_process import ProcessCompute
from tests.functional.agent_helpers import Issued, Pki, boot, issue, make_drivers, make_pki

AMPHORA_ID = "amp-tls-1"


@pytest.fixture(scope="module")
def agent(tmp_path_factory) -> Iterator[tuple[Pki, ProcessCompute, RestAmphoraDriver, AmphoraEndpoint]]:
    directory = str(tmp_path_factory.mktemp("agent-tls"))
    pki = make_pki(directory)
    compute, rest = make_drivers(directory, pki)
    try:
        _compute_id, endpoint = boot(compute, pki, AMPHORA_ID)
        rest.wait_until_reachable(endpoint, 30)
        yield pki, compute, rest, endpoint
    finally:
        rest.close()
        compute.close()


def _client_context(pki: Pki, tmp_path, client: Issued | None, *, tls12: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=pki.server_ca.cert_pem.decode())
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    if client is not None:
        cert, key = tmp_path / "client_cert.pem", tmp_path / "client_key.pem"
        cert.write_bytes(client.cert_pem)
        key.write_bytes(client.key_pem)
        context.load_cert_chain(str(cert), str(key))
    return context


def raw_request(endpoint: AmphoraEndpoint, context: ssl.SSLContext) -> bytes:
    """Send GET /1.0/info over TLS and return what came back (b'' if the peer closed)."""
    with socket.create_connection((endpoint.address, endpoint.port), timeout=5) as plain:
        with context.wrap_socket(plain, server_hostname=AMPHORA_ID) as tls:
            tls.sendall(b"GET /1.0/info HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
            return tls.recv(4096)


def test_controller_certificate_from_the_client_ca_is_accepted(agent, tmp_path):
    pki, _compute, rest, endpoint = agent
    assert rest.get_info(endpoint)["amphora_id"] == AMPHORA_ID
    answer = raw_request(endpoint, _client_context(pki, tmp_path, pki.controller, tls12=True))
    assert answer.startswith(b"HTTP/1.1 200")


def _refused_clients(pki: Pki) -> dict[str, Issued | None]:
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    return {
        "signed by the server CA": issue(pki.server_ca, "keramos-controller", server=False),
        "self-signed": issue(None, "keramos-controller", server=False),
        "none": None,
        "expired": issue(
            pki.client_ca,
            "keramos-controller",
            server=False,
            not_before=past - dt.timedelta(days=2),
            not_after=past,
        ),
    }


@pytest.mark.parametrize("kind", ["signed by the server CA", "self-signed", "none", "expired"])
def test_other_client_certificates_are_refused_in_the_handshake(agent, tmp_path, kind):
    pki, _compute, _rest, endpoint = agent
    client = _refused_clients(pki)[kind]
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        raw_request(endpoint, _client_context(pki, tmp_path, client, tls12=True))
    # With TLS 1.3 the client finishes its side first; the refusal arrives as an alert instead
    # of an HTTP answer.
    try:
        answer = raw_request(endpoint, _client_context(pki, tmp_path, client, tls12=False))
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        answer = b""
    assert not answer.startswith(b"HTTP/")


def test_plain_http_is_refused(agent):
    _pki, _compute, _rest, endpoint = agent
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://{endpoint.address}:{endpoint.port}/1.0/info", timeout=5)


def test_an_agent_not_named_by_the_amphora_id_is_refused(agent):
    _pki, _compute, rest, endpoint = agent
    impostor = AmphoraEndpoint("amp-somebody-else", endpoint.address, endpoint.port)
    with pytest.raises(AgentError) as caught:
        rest.get_info(impostor)
    assert not caught.value.retryable
    assert "TLS failure" in str(caught.value)


def test_a_certificate_filename_traversal_is_refused_over_tls(agent):
    pki, compute, rest, endpoint = agent
    for filename in ("../../escape.pem", "..%2F..%2Fescape.pem", "..", ".escape.pem"):
        with pytest.raises(AgentError) as caught:
            rest.upload_listener_certificate(endpoint, "lb-1", filename, pki.server_ca.cert_pem)
        assert caught.value.status in (400, 404)
        assert not caught.value.retryable
    escaped = [
        os.path.join(root, name)
        for root, _dirs, names in os.walk(compute.instances_dir)
        for name in names
        if "escape" in name
    ]
    assert escaped == []


def _served_certificate(endpoint: AmphoraEndpoint, pki: Pki, tmp_path) -> bytes:
    context = _client_context(pki, tmp_path, pki.controller, tls12=False)
    with socket.create_connection((endpoint.address, endpoint.port), timeout=5) as plain:
        with context.wrap_socket(plain, server_hostname=AMPHORA_ID) as tls:
            return tls.getpeercert(binary_form=True)


def test_rotated_server_certificate_is_served_to_new_connections(agent, tmp_path):
    pki, _compute, rest, endpoint = agent
    before = _served_certificate(endpoint, pki, tmp_path)
    rotated = issue(pki.server_ca, AMPHORA_ID, server=True)
    rest.install_certificate(endpoint, rotated.bundle)
    after = _served_certificate(endpoint, pki, tmp_path)
    assert after != before
    assert ssl.DER_cert_to_PEM_cert(after).encode().strip() == rotated.cert_pem.strip()
    rest.forget(endpoint)
    assert rest.get_info(endpoint)["amphora_id"] == AMPHORA_ID


def test_a_server_certificate_for_another_amphora_is_not_installed(agent, tmp_path):
    pki, _compute, rest, endpoint = agent
    before = _served_certificate(endpoint, pki, tmp_path)
    with pytest.raises(AgentError) as caught:
        rest.install_certificate(endpoint, issue(pki.server_ca, "amp-other", server=True).bundle)
    assert caught.value.status == 400
    assert "does not name" in caught.value.details
    assert _served_certificate(endpoint, pki, tmp_path) == before
