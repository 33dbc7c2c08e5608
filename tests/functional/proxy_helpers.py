"""Helpers for the proxy tests: the proxy CA and its certificates, a running ``keramos-proxy``."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence

from keramos.framework.files import write_atomic
from keramos.framework.pki.ca import create_proxy_ca, issue_proxy_certificate

PASSPHRASE = b"proxy test passphrase"
ROUTE_KEY = "route key shared by controller and proxies"


@dataclasses.dataclass(frozen=True)
class ProxyPki:
    """The proxy CA's files: the CA, a proxy's certificate and a controller's, written to disk."""

    directory: str

    def path(self, name: str) -> str:
        """Path of a file written by :func:`make_proxy_pki`."""
        return os.path.join(self.directory, name)

    def rest_overrides(self, route_key: str = ROUTE_KEY) -> dict[str, str]:
        """``[amphora_rest]`` options of a controller reaching amphorae through proxies."""
        return {
            "proxy_client_cert": self.path("controller/cert.pem"),
            "proxy_client_key": self.path("controller/key.pem"),
            "proxy_ca": self.path("proxy_ca.pem"),
            "proxy_route_key": route_key,
        }


def make_proxy_pki(directory: str, proxy_ips: Sequence[str] = ("127.0.0.1",)) -> ProxyPki:
    """Make a proxy CA in ``directory`` and issue the proxy's and the controller's certificates."""
    create_proxy_ca(directory, PASSPHRASE)
    for role, name, ips in (("server", "keramos-proxy", proxy_ips), ("client", "keramos-controller", ())):
        issued = issue_proxy_certificate(directory, PASSPHRASE, name, role, ip_addresses=ips)
        out = "proxy" if role == "server" else "controller"
        write_atomic(os.path.join(directory, out, "cert.pem"), issued.certificate_pem, make_dirs=True)
        write_atomic(os.path.join(directory, out, "key.pem"), issued.private_key_pem or b"", make_dirs=True)
    return ProxyPki(directory)


@dataclasses.dataclass
class RunningProxy:
    """A ``keramos-proxy`` process and where it listens."""

    host: str
    port: int
    popen: subprocess.Popen[bytes]
    log_path: str

    @property
    def address(self) -> str:
        """``host:port`` as an amphora record names its proxy."""
        return f"{self.host}:{self.port}"

    def log(self) -> str:
        """What the proxy logged so far."""
        with open(self.log_path, encoding="utf-8", errors="replace") as stream:
            return stream.read()

    def kill(self) -> None:
        """SIGKILL the proxy (a crashed replica)."""
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()


def proxy_config(
    pki: ProxyPki,
    *,
    host: str,
    port: int,
    networks: Mapping[str, str | None],
    route_key: str = ROUTE_KEY,
    heartbeat_port: int = 0,
    heartbeat_upstreams: Sequence[str] = (),
) -> str:
    """The text of a ``[proxy]`` configuration file."""
    lines = [
        "[DEFAULT]",
        "debug = true",
        "[proxy]",
        f"bind_host = {host}",
        f"bind_port = {port}",
        f"server_cert = {pki.path('proxy/cert.pem')}",
        f"server_key = {pki.path('proxy/key.pem')}",
        f"proxy_ca = {pki.path('proxy_ca.pem')}",
        f"route_key = {route_key}",
        "networks = " + ", ".join(f"{net}:{ns or ''}" for net, ns in networks.items()),
        f"heartbeat_port = {heartbeat_port}",
        "heartbeat_upstreams = " + ", ".join(heartbeat_upstreams),
    ]
    return "\n".join(lines) + "\n"


def _accepts(host: str, port: int, namespace: str | None) -> bool:
    command = ["ip", "netns", "exec", namespace] if namespace else []
    probe = [*command, sys.executable, "-c",
             f"import socket; socket.create_connection(({host!r}, {port}), timeout=0.5).close()"]
    if namespace:
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def running_proxy(
    directory: str, config: str, *, host: str, port: int, namespace: str | None = None
) -> Iterator[RunningProxy]:
    """Start ``keramos-proxy`` on ``config`` (inside ``namespace`` if given); stop it after."""
    os.makedirs(directory, exist_ok=True)
    config_path = os.path.join(directory, "proxy.conf")
    write_atomic(config_path, config.encode())
    log_path = os.path.join(directory, "proxy.log")
    command = [sys.executable, "-m", "keramos.plugins.proxy.main", "--config-file", config_path]
    if namespace:
        command = ["ip", "netns", "exec", namespace, *command]
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proxy = RunningProxy(host, port, popen, log_path)
    try:
        deadline = time.monotonic() + 20
        while not _accepts(host, port, namespace):
            assert popen.poll() is None, f"keramos-proxy exited: {proxy.log()}"
            assert time.monotonic() < deadline, f"keramos-proxy does not listen: {proxy.log()}"
            time.sleep(0.1)
        yield proxy
    finally:
        if popen.poll() is None:
            popen.terminate()
            try:
                popen.wait(10)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()


#: The subnet both tenant networks use: the proxy's leg is the gateway, the agent the next one.
TENANT_GATEWAY = "10.9.0.1"
TENANT_AGENT = "10.9.0.2"


@dataclasses.dataclass(frozen=True)
class ProxiedNetworks:
    """Namespaces of the proxy test, all named with one unique tag.

    The controller is the test's own namespace, linked to ``proxy_ns`` only
    (``controller_address`` <-> ``proxy_address``). Each tenant network ``tenants[net]`` holds
    the amphorae (``TENANT_AGENT``) and is linked to one leg namespace of the proxy,
    ``legs[net]`` (``TENANT_GATEWAY``), which the proxy enters to connect; every tenant uses the
    same subnet, and no namespace routes between tenants or to the controller.
    """

    controller_address: str
    proxy_address: str
    proxy_ns: str
    legs: dict[str, str]
    tenants: dict[str, str]


def namespaces_refused() -> str | None:
    """Why this host cannot create network namespaces (no CAP_SYS_ADMIN...), or None if it can."""
    probe = f"kpx-probe-{os.getpid()}-{secrets.token_hex(2)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=15)
    if made.returncode:
        return made.stderr.strip() or f"ip netns add exited with {made.returncode}"
    _ip("netns", "del", probe, check=False)
    return None


def _ip(*arguments: str, check: bool = True) -> None:
    subprocess.run(["ip", *arguments], check=check, capture_output=True, timeout=15)


def _veth(left: str, left_ns: str | None, right: str, right_ns: str) -> None:
    _ip("link", "add", left, "type", "veth", "peer", "name", right)
    if left_ns:
        _ip("link", "set", left, "netns", left_ns)
    _ip("link", "set", right, "netns", right_ns)


def _address(namespace: str | None, device: str, cidr: str) -> None:
    prefix = ("-n", namespace) if namespace else ()
    _ip(*prefix, "addr", "add", cidr, "dev", device)
    _ip(*prefix, "link", "set", device, "up")


@contextlib.contextmanager
def proxied_networks(network_ids: Sequence[str]) -> Iterator[ProxiedNetworks]:
    """Create the namespaces and links of :class:`ProxiedNetworks`; delete them all after."""
    tag = f"{os.getpid() % 1000:03d}{secrets.token_hex(2)}"
    octets = (200 + secrets.randbelow(50), secrets.randbelow(256))
    controller_address, proxy_address = (f"10.{octets[0]}.{octets[1]}.{n}" for n in (1, 2))
    namespaces: list[str] = []
    root_link = f"kc{tag}"

    def namespace(name: str) -> str:
        _ip("netns", "add", name)
        namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    try:
        proxy_ns = namespace(f"kpx-{tag}-p")
        _veth(root_link, None, f"kp{tag}", proxy_ns)
        _address(None, root_link, f"{controller_address}/30")
        _address(proxy_ns, f"kp{tag}", f"{proxy_address}/30")
        legs, tenants = {}, {}
        for index, network_id in enumerate(network_ids):
            legs[network_id] = namespace(f"kpx-{tag}-l{index}")
            tenants[network_id] = namespace(f"kpx-{tag}-t{index}")
            _veth(f"kl{tag}{index}", legs[network_id], f"kt{tag}{index}", tenants[network_id])
            _address(legs[network_id], f"kl{tag}{index}", f"{TENANT_GATEWAY}/24")
            _address(tenants[network_id], f"kt{tag}{index}", f"{TENANT_AGENT}/24")
        yield ProxiedNetworks(controller_address, proxy_address, proxy_ns, legs, tenants)
    finally:
        for name in reversed(namespaces):
            _ip("netns", "del", name, check=False)
        _ip("link", "del", root_link, check=False)


def get_in_namespace(namespace: str, address: str, port: int, timeout: float = 3.0) -> bytes:
    """The body of ``GET /`` (HTTP/1.0) at ``address:port`` seen from ``namespace``."""
    from keramos.plugins.proxy.netns import NamespaceSockets

    sockets = NamespaceSockets(namespace)
    try:
        with sockets.connect(address, port, timeout) as sock:
            sock.sendall(f"GET / HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    finally:
        sockets.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], head
    return body


@contextlib.contextmanager
def backend_in_namespace(namespace: str, directory: str, body: bytes, port: int) -> Iterator[None]:
    """An HTTP server on 127.0.0.1:``port`` inside ``namespace`` answering ``body`` to GET /."""
    os.makedirs(directory, exist_ok=True)
    write_atomic(os.path.join(directory, "index.html"), body)
    popen = subprocess.Popen(
        ["ip", "netns", "exec", namespace, sys.executable, "-m", "http.server", str(port),
         "--bind", "127.0.0.1", "--directory", directory],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if get_in_namespace(namespace, "127.0.0.1", port, 0.5) == body:
                    break
            except (OSError, AssertionError):
                assert time.monotonic() < deadline, f"backend in {namespace} did not start"
                time.sleep(0.1)
        yield
    finally:
        popen.terminate()
        popen.wait(10)


BALANCER_CONFIG = """global
    maxconn 1000
defaults
    mode tcp
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    retries 3
    option redispatch
frontend proxies
    bind {address}
    default_backend replicas
backend replicas
    balance roundrobin
{servers}
"""


@contextlib.contextmanager
def tcp_balancer(directory: str, namespace: str, host: str, backends: Sequence[str]) -> Iterator[str]:
    """HAProxy in TCP mode on ``host`` (in ``namespace``) in front of ``backends`` (host:port),
    checking them every 200 ms; yields its ``host:port``. TLS passes through untouched."""
    from keramos.plugins.compute_process import free_port
    from keramos.plugins.proxy.netns import NamespaceSockets
    from tests.functional.agent_helpers import require_haproxy

    os.makedirs(directory, exist_ok=True)
    sockets = NamespaceSockets(namespace)
    port = free_port(host, sockets)
    sockets.close()
    servers = "\n".join(
        f"    server replica{index} {backend} check inter 200 fall 1 rise 2"
        for index, backend in enumerate(backends)
    )
    config_path = os.path.join(directory, "haproxy.cfg")
    write_atomic(config_path, BALANCER_CONFIG.format(address=f"{host}:{port}", servers=servers).encode())
    popen = subprocess.Popen(
        ["ip", "netns", "exec", namespace, require_haproxy(), "-db", "-f", config_path],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not _accepts(host, port, namespace):
            assert popen.poll() is None, "the balancer's haproxy exited"
            assert time.monotonic() < deadline, "the balancer's haproxy does not listen"
            time.sleep(0.1)
        yield f"{host}:{port}"
    finally:
        popen.terminate()
        popen.wait(10)
