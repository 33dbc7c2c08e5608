"""Helpers for the proxy tests: the proxy CA and its certificates, a running ``keramos-proxy``."""

from __future__ import annotations

import contextlib
import dataclasses
import os
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
