"""Uploads are all or nothing: a real agent (gunicorn, mutual TLS) given chunked bodies just
under, at and over each upload's limit stores the first two whole and refuses the third with
413, storing nothing.

Flask's test client does not reproduce gunicorn's handling of ``Transfer-Encoding: chunked``, so
the bodies are framed by hand over :mod:`http.client`. Both limits are equal here, as the 1 MiB
defaults are: that is where a chunked body used to be cut at the limit and stored.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from tests.functional.agent_helpers import (
    AgentProcess,
    issue,
    make_pki,
    require_keepalived,
    run_agent,
    send_chunked,
)

AMPHORA_ID = "amp-limits"
LB_ID = "lb-limits"
UDP_ID = "udp-limits"
LIMIT = 6144


def padded(base: bytes, size: int, comment: bytes = b"#") -> bytes:
    """``base`` followed by comment lines (at most 64 bytes each) to exactly ``size`` bytes."""
    body = bytearray(base)
    while len(body) < size:
        line = min(64, size - len(body))
        body += comment * (line - 1) + b"\n" if line > 1 else b"\n"
    assert len(body) == size
    return bytes(body)


@pytest.fixture(scope="module")
def agent(tmp_path_factory) -> Iterator[AgentProcess]:
    directory = str(tmp_path_factory.mktemp("agent-limits"))
    pki = make_pki(directory)
    with run_agent(
        directory,
        pki,
        AMPHORA_ID,
        max_config_bytes=str(LIMIT),
        max_certificate_bytes=str(LIMIT),
        keepalived_binary=require_keepalived(),
    ) as running:
        yield running


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except FileNotFoundError:
        return None


def _server_bundle(agent: AgentProcess) -> bytes:
    with open(agent.path("amphora_server_cert.pem"), "rb") as cert:
        with open(agent.path("amphora_server_key.pem"), "rb") as key:
            return cert.read() + key.read()


HAPROXY_BASE = (
    b"global\n    maxconn 10\ndefaults\n    mode tcp\n    timeout connect 1s\n"
    b"    timeout client 1s\n    timeout server 1s\nfrontend limits\n    bind 127.0.0.1:1\n"
)
LISTENER_PEM = issue(None, "listener.example", server=True).cert_pem

#: name -> (path, body of a given size, where the agent stores it, 2xx status)
UPLOADS: dict[str, tuple[str, Callable[[AgentProcess, int], bytes], tuple[str, ...], int]] = {
    "haproxy config": (
        f"/1.0/loadbalancer/{AMPHORA_ID}/{LB_ID}/haproxy",
        lambda agent, size: padded(HAPROXY_BASE, size),
        ("state", "loadbalancers", LB_ID, "haproxy.cfg"),
        202,
    ),
    "udp listener config": (
        f"/1.0/listeners/{AMPHORA_ID}/{UDP_ID}/udp_listener",
        lambda agent, size: padded(b"global_defs {\n    router_id limits\n}\n", size),
        ("state", "udp_listeners", UDP_ID, "keepalived.conf"),
        200,
    ),
    "agent config": (
        "/1.0/config",
        lambda agent, size: padded(b"[amphora_agent]\n", size),
        ("keramos-agent.conf",),
        202,
    ),
    "listener certificate": (
        f"/1.0/loadbalancer/{LB_ID}/certificates/listener.pem",
        lambda agent, size: padded(LISTENER_PEM, size, b" "),
        ("state", "loadbalancers", LB_ID, "certificates", "listener.pem"),
        200,
    ),
    "server certificate": (
        "/1.0/certificate",
        lambda agent, size: padded(_server_bundle(agent), size, b" "),
        ("amphora_server_cert.pem",),
        202,
    ),
}


@pytest.mark.parametrize("name", list(UPLOADS))
def test_a_chunked_body_under_and_at_the_limit_is_stored_whole(agent, name):
    path, make, stored, status = UPLOADS[name]
    for size in (LIMIT - 1, LIMIT):
        body = make(agent, size)
        answer = send_chunked(agent, "PUT", path, body)
        assert answer[0] == status, answer
        if name != "server certificate":
            assert _read(agent.path(*stored)) == body
        else:
            assert _read(agent.path(*stored)).startswith(b"-----BEGIN CERTIFICATE-----")


@pytest.mark.parametrize("over", [1, 100, 3 * LIMIT])
@pytest.mark.parametrize("name", list(UPLOADS))
def test_a_chunked_body_over_the_limit_is_refused_with_413_and_nothing_is_stored(agent, name, over):
    path, make, stored, _status = UPLOADS[name]
    before = _read(agent.path(*stored))
    status, body = send_chunked(agent, "PUT", path, make(agent, LIMIT + over))
    if over < LIMIT:
        assert status == 413, body
        assert b"larger than 6144 bytes" in body
    else:
        # Far over the limit the agent may close the connection before the client has sent
        # everything and reads the answer; either way nothing is stored.
        assert status in (413, None)
    assert _read(agent.path(*stored)) == before


def test_the_same_body_with_a_content_length_over_the_limit_is_refused_too(agent):
    path, make, stored, _status = UPLOADS["haproxy config"]
    before = _read(agent.path(*stored))
    connection = agent.connection()
    try:
        connection.request("PUT", path, body=make(agent, LIMIT + 1))
        assert connection.getresponse().status == 413
    finally:
        connection.close()
    assert _read(agent.path(*stored)) == before


def test_the_agent_opens_no_gunicorn_control_socket(agent):
    home = agent.path("home")
    found = [os.path.join(root, name) for root, _dirs, names in os.walk(home) for name in names]
    assert found == []
