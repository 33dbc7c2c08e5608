"""Amphorae on two networks that share one subnet, reached only through keramos-proxy.

Real network namespaces (needs root; fails under CI=true without it): two tenant networks both
use 10.9.0.0/24 with an agent at 10.9.0.2 in each; the proxy's namespace is linked to the
controller (this test's namespace) and enters one leg namespace per tenant network to connect.
The controller has no route to either agent. Create, config push, traffic through each HAProxy,
certificate rotation, heartbeats relayed to the health manager, failover and delete all go
through the proxy, and each request is answered by the agent of the network it named.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from keramos.framework.agent_protocol.heartbeat import Heartbeat, HeartbeatVerifier, encode
from keramos.framework.contracts import AmphoraEndpoint
from keramos.framework.records import AmphoraRecord, AmphoraStatus
from keramos.plugins.health.checks import HeartbeatRecorder
from keramos.plugins.health.manager import HeartbeatListener
from keramos.plugins.proxy.netns import NamespaceSockets
from tests.conftest import require
from tests.functional.agent_helpers import free_port
from tests.functional.lifecycle_helpers import description, lifecycle_worker
from tests.functional.proxy_helpers import (
    TENANT_AGENT,
    TENANT_GATEWAY,
    backend_in_namespace,
    get_in_namespace,
    make_proxy_pki,
    namespaces_refused,
    proxied_networks,
    proxy_config,
    running_proxy,
    tcp_balancer,
)
from tests.unit.health_helpers import wait_for

NETWORKS = ("tenant-a", "tenant-b")
HEARTBEAT_KEY = "proxy-test-heartbeat-key"
LISTENER_PORT = 8080
BACKEND_PORT = 8000


@pytest.fixture(scope="module")
def networks() -> Iterator:
    require(os.geteuid() == 0, "root (the proxy test creates network namespaces)")
    require(shutil.which("ip") is not None, "ip (Debian package iproute2)")
    refused = namespaces_refused()
    require(refused is None, f"network namespaces (ip netns add: {refused})")
    with proxied_networks(NETWORKS) as made:
        yield made


def _heartbeat_listener(networks, state_store) -> HeartbeatListener:
    verifier = HeartbeatVerifier(HEARTBEAT_KEY, replay_window=30)
    listener = HeartbeatListener.bind(networks.controller_address, 0, verifier, HeartbeatRecorder(state_store))
    threading.Thread(target=listener.serve, daemon=True).start()
    return listener


@contextlib.contextmanager
def _deployment(
    networks, tmp_path, *, replicas: int = 1, amphora_options: dict | None = None, **rest_options
) -> Iterator:
    """Proxies serving both networks (``replicas`` of them behind one HAProxy in TCP mode when
    more than one), an in-process worker reaching amphorae through them, a health manager's
    listener behind the proxies' heartbeat relay, a backend in each network."""
    proxy_pki = make_proxy_pki(str(tmp_path / "proxy-ca"), proxy_ips=(networks.proxy_address,))
    heartbeat_port = free_port()
    with lifecycle_worker(
        tmp_path,
        driver_settings={
            "compute_process": {
                "bind_host": TENANT_AGENT,
                "networks": [f"{net}:{ns}" for net, ns in networks.tenants.items()],
                "proxy": "unset:1",
            },
            "amphora_rest": {**proxy_pki.rest_overrides(), **rest_options},
        },
        worker_settings={"health": {"heartbeat_key": HEARTBEAT_KEY}},
        controller_heartbeat_endpoints=[f"{TENANT_GATEWAY}:{heartbeat_port}"],
        heartbeat_interval=0.2,
        **(amphora_options or {}),
    ) as worker, contextlib.ExitStack() as stack:
        listener = _heartbeat_listener(networks, worker.state_store)
        stack.callback(listener.stop)
        host = networks.proxy_address if replicas == 1 else "127.0.0.1"
        proxies = []
        for index in range(replicas):
            port = free_port()
            config = proxy_config(
                proxy_pki,
                host=host,
                port=port,
                networks=networks.legs,
                heartbeat_port=heartbeat_port,
                heartbeat_upstreams=["{}:{}".format(*listener.address)],
            )
            proxies.append(stack.enter_context(running_proxy(
                str(tmp_path / f"proxy-{index}"), config, host=host, port=port, namespace=networks.proxy_ns,
            )))
        if replicas == 1:
            worker.drivers.compute.proxy = proxies[0].address
        else:
            front = stack.enter_context(tcp_balancer(
                str(tmp_path / "balancer"), networks.proxy_ns, networks.proxy_address,
                [proxy.address for proxy in proxies],
            ))
            worker.drivers.compute.proxy = front
        for network_id, body in (("tenant-a", b"tenant-a\n"), ("tenant-b", b"tenant-b\n")):
            stack.enter_context(backend_in_namespace(
                networks.tenants[network_id], str(tmp_path / f"www-{network_id}"), body, BACKEND_PORT
            ))
        yield worker, proxies, listener


@pytest.fixture
def deployment(networks, tmp_path):
    """One proxy (see :func:`_deployment`)."""
    with _deployment(networks, tmp_path) as (worker, proxies, listener):
        yield worker, proxies[0], listener


def _endpoint(record: AmphoraRecord | dict) -> AmphoraEndpoint:
    fields = record if isinstance(record, dict) else record.to_dict()
    return AmphoraEndpoint.of(fields["amphora_id"], fields, "agent_port")


def _lb(lb_id: str) -> dict:
    return {"lb_id": lb_id, **description(LISTENER_PORT, BACKEND_PORT)}


def test_each_network_reaches_its_own_agent_through_the_proxy(networks, deployment, caplog):
    worker, proxy, listener = deployment
    amphorae = {}
    for network_id, amphora_id in zip(NETWORKS, ("amp-a", "amp-b"), strict=True):
        payload = {"amphora_id": amphora_id, "image_id": "image-1", "network_id": network_id}
        created = worker.run("create_amphora", {**payload, "lb": _lb(f"lb-{network_id}")})["amphora"]
        route = (created["address"], created["network_id"], created["proxy"])
        assert route == (TENANT_AGENT, network_id, proxy.address)
        amphorae[network_id] = created

    # The controller has no route to the agents' address: only the proxy reaches them.
    with pytest.raises(OSError):
        socket.create_connection((TENANT_AGENT, amphorae["tenant-a"]["agent_port"]), timeout=1).close()

    driver = worker.drivers.amphora
    for network_id, record in amphorae.items():
        assert driver.get_info(_endpoint(record))["amphora_id"] == record["amphora_id"]
        body = get_in_namespace(networks.tenants[network_id], "127.0.0.1", LISTENER_PORT)
        assert body == f"{network_id}\n".encode()

    # A push to one network's amphora changes that agent only.
    worker.run("push_config", {**_lb("lb-tenant-a"), "amphora_ids": ["amp-a"]})
    versions = {
        net: driver.get_info(_endpoint(record))["loadbalancers"] for net, record in amphorae.items()
    }
    assert versions["tenant-a"]["lb-tenant-a"]["running_version"] == 2
    assert versions["tenant-b"] == {"lb-tenant-b": versions["tenant-b"]["lb-tenant-b"]}
    assert versions["tenant-b"]["lb-tenant-b"]["running_version"] == 1

    # Heartbeats come through the relay and are checked (signature, sequence) upstream.
    store = worker.state_store
    wait_for(lambda: all(store.get(AmphoraRecord, a).last_heartbeat_at for a in ("amp-a", "amp-b")),
             what="heartbeats of both amphorae through the proxy")
    replayed = encode(Heartbeat("amp-a", 1, time.time(), {}), HEARTBEAT_KEY)
    sockets = NamespaceSockets(networks.tenants["tenant-a"])
    with sockets.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(replayed, (TENANT_GATEWAY, proxy_heartbeat_port(proxy)))
        sender.sendto(b"KHB1" + b"{}" + b"\0" * 32, (TENANT_GATEWAY, proxy_heartbeat_port(proxy)))
    sockets.close()
    wait_for(lambda: "amp-a: sequence 1 is not greater" in caplog.text, what="the replay refused")
    wait_for(lambda: "bad signature" in caplog.text, what="the forged heartbeat refused")

    # Certificate rotation through the proxy: a new connection sees the new certificate.
    before = store.get(AmphoraRecord, "amp-b").cert_serial
    worker.run("rotate_certificate", {"amphora_id": "amp-b"})
    after = store.get(AmphoraRecord, "amp-b")
    assert after.cert_serial != before
    driver.forget(_endpoint(after))
    assert peer_serial(driver, _endpoint(after)) == after.cert_serial

    # Failover: the replacement boots on the same network, behind the same proxy.
    replaced = worker.run("failover_amphora", {"amphora_id": "amp-a"})
    new = replaced["amphora"]
    assert replaced["moved_loadbalancers"] == ["lb-tenant-a"]
    assert (new["network_id"], new["proxy"], new["address"]) == ("tenant-a", proxy.address, TENANT_AGENT)
    assert driver.get_info(_endpoint(new))["amphora_id"] == new["amphora_id"]
    assert store.get(AmphoraRecord, "amp-a").status == AmphoraStatus.DELETED
    assert get_in_namespace(networks.tenants["tenant-a"], "127.0.0.1", LISTENER_PORT) == b"tenant-a\n"

    worker.run("delete_amphora", {"amphora_id": "amp-b"})
    assert store.get(AmphoraRecord, "amp-b").status == AmphoraStatus.DELETED
    assert get_in_namespace(networks.tenants["tenant-a"], "127.0.0.1", LISTENER_PORT) == b"tenant-a\n"


def proxy_heartbeat_port(proxy) -> int:
    """The relay's port, read back from the proxy's configuration file."""
    with open(os.path.join(os.path.dirname(proxy.log_path), "proxy.conf")) as stream:
        for line in stream:
            if line.startswith("heartbeat_port"):
                return int(line.split("=")[1])
    raise AssertionError("no heartbeat_port")


def peer_serial(driver, endpoint: AmphoraEndpoint) -> str:
    """The serial of the certificate the agent presents, read inside the tunnel."""
    from cryptography import x509

    response = driver.session(endpoint).get(driver.url(endpoint, "/1.0/info"), stream=True, timeout=10)
    try:
        der = response.raw.connection.sock.getpeercert(binary_form=True)
    finally:
        response.close()
    return format(x509.load_der_x509_certificate(der).serial_number, "032x")


def test_pushes_move_to_the_other_replica_when_one_is_killed(networks, tmp_path):
    with _deployment(networks, tmp_path, replicas=2, retries=3) as (worker, proxies, _):
        for network_id, amphora_id in zip(NETWORKS, ("amp-a", "amp-b"), strict=True):
            payload = {"amphora_id": amphora_id, "image_id": "image-1", "network_id": network_id}
            worker.run("create_amphora", {**payload, "lb": _lb(f"lb-{network_id}")})
        pushes = 0
        for round_number in range(8):
            if round_number == 3:
                assert all("tunnel" in proxy.log() for proxy in proxies), "both replicas carried tunnels"
                proxies[0].kill()
                carried_by_survivor = proxies[1].log().count("tunnel ")
            for network_id, amphora_id in zip(NETWORKS, ("amp-a", "amp-b"), strict=True):
                worker.run("push_config", {**_lb(f"lb-{network_id}"), "amphora_ids": [amphora_id]})
                pushes += 1
        assert proxies[1].log().count("tunnel ") > carried_by_survivor
        driver = worker.drivers.amphora
        for network_id, amphora_id in zip(NETWORKS, ("amp-a", "amp-b"), strict=True):
            record = worker.state_store.get(AmphoraRecord, amphora_id)
            loadbalancers = driver.get_info(_endpoint(record))["loadbalancers"]
            assert loadbalancers[f"lb-{network_id}"]["running_version"] == 1 + pushes // 2
            body = get_in_namespace(networks.tenants[network_id], "127.0.0.1", LISTENER_PORT)
            assert body == f"{network_id}\n".encode()


def test_amphorae_that_make_their_own_key_are_certified_through_the_proxy(networks, tmp_path):
    """csr mode: the bootstrap calls (fetch the CSR, install the signed certificate, pinned to
    the agent's key) go through the tunnel too; the key never leaves the amphora."""
    with _deployment(networks, tmp_path, amphora_options={"certificate_mode": "csr"}) as (worker, proxies, _):
        driver = worker.drivers.amphora
        for network_id, amphora_id in zip(NETWORKS, ("amp-a", "amp-b"), strict=True):
            payload = {"amphora_id": amphora_id, "image_id": "image-1", "network_id": network_id}
            created = worker.run("create_amphora", payload)["amphora"]
            assert (created["proxy"], created["network_id"]) == (proxies[0].address, network_id)
            endpoint = _endpoint(created)
            assert driver.get_info(endpoint)["amphora_id"] == amphora_id
            assert peer_serial(driver, endpoint) == created["cert_serial"]
            drive = os.listdir(os.path.join(worker.drivers.compute.instances_dir, created["compute_id"]))
            assert "amphora_server_key.pem" not in drive
