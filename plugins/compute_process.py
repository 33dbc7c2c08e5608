"""The ``process`` compute driver: an amphora is a local ``keramos-agent`` process on loopback.

``build`` writes the config drive (server certificate and key, client CA, agent configuration,
activation token) into a directory of its own, 0700, files 0600, and starts the agent on a free
loopback port with a configuration pointing at those files. A config drive without a server
certificate and key starts the agent in csr mode (it makes its own key); one with an activation
token starts it unactivated, pointed at the token file. The instance is BUILDING until the agent
accepts TCP connections, ACTIVE while it runs, and ERROR (with the tail of its log) once it died.
``delete`` stops the agent (SIGTERM to its process group, SIGKILL after a grace period), the
HAProxy processes it started, and removes the directory. Real processes, real TLS: what the
functional tests and the demo boot.

An amphora built for a network of ``networks`` runs in that network's namespace instead (``ip
netns exec``), on ``bind_host`` there: several namespaces may hold agents at the same address,
which the controller reaches through ``proxy`` (reported as the instance's route).
"""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Mapping

from cryptography import x509
from oslo_config import cfg

from keramos.framework.agent_protocol.rest import is_valid_id
from keramos.framework.contracts import ComputeDriver, Instance, InstanceStatus
from keramos.framework.contracts.compute import ACTIVATION_TOKEN_FILE
from keramos.framework.errors import ConfigError, DriverError, NotFound
from keramos.framework.files import write_atomic
from keramos.plugins.agent.haproxy import HaproxyManager
from keramos.plugins.agent.options import GROUP as AGENT_GROUP
from keramos.plugins.proxy.netns import NamespaceSockets
from keramos.plugins.proxy.options import parse_networks

GROUP = "compute_process"
AGENT_CONFIG_NAME = "keramos-agent.conf"
_DRIVE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_RESERVED_NAMES = frozenset({AGENT_CONFIG_NAME, "agent.log", "state"})

process_opts = [
    cfg.StrOpt(
        "instances_dir",
        default="$state_path/compute_process",
        help="Directory holding one sub-directory (config drive and agent state) per instance.",
    ),
    cfg.StrOpt(
        "bind_host",
        default="127.0.0.1",
        help="Loopback address the agents listen on.",
    ),
    cfg.StrOpt(
        "python",
        default=sys.executable,
        sample_default="<the running interpreter>",
        help="Python interpreter that runs keramos.plugins.agent.main.",
    ),
    cfg.StrOpt(
        "haproxy_binary",
        default="haproxy",
        help="HAProxy executable the agents run (written into their configuration).",
    ),
    cfg.ListOpt(
        "networks",
        default=[],
        help="NETWORK_ID:NAMESPACE: agents of amphorae created on NETWORK_ID run in that network "
        "namespace (on bind_host there) and are reached through 'proxy'. Other networks run on "
        "loopback as usual.",
    ),
    cfg.StrOpt(
        "proxy",
        help="host:port of the keramos-proxy (or of the load balancer in front of its replicas) "
        "reported for amphorae running in a namespace of 'networks'.",
    ),
    cfg.StrOpt("ip_binary", default="ip", help="iproute2's ip, which starts agents in namespaces."),
    cfg.FloatOpt(
        "stop_timeout",
        default=10.0,
        min=0,
        help="Seconds an agent given SIGTERM has to exit before it is killed.",
    ),
]


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """The driver's options, for the sample-config generator."""
    return [(GROUP, list(process_opts))]


@dataclasses.dataclass
class _Process:
    amphora_id: str
    directory: str
    port: int
    popen: subprocess.Popen[bytes]
    network_id: str | None = None
    namespace: str | None = None


def free_port(host: str = "127.0.0.1", sockets: NamespaceSockets | None = None) -> int:
    """A TCP port nothing listens on right now (in the namespace of ``sockets``)."""
    with (sockets or NamespaceSockets(None)).socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _classify(config_drive: Mapping[str, bytes]) -> dict[str, str]:
    """Tell which config drive file is the server certificate, its key, the client CA, the config
    and the activation token (by its name, :data:`ACTIVATION_TOKEN_FILE`).

    Files are recognised by content, so that both Octavia's names (``server.pem`` holding the
    certificate and key, ``client_ca.pem``) and Keramos's (``amphora_server_cert.pem``...) work.
    """
    roles: dict[str, str] = {}
    for name, data in config_drive.items():
        if name == ACTIVATION_TOKEN_FILE:
            roles["activation_token"] = name
        elif name.endswith(".conf"):
            roles["config"] = name
        elif b"PRIVATE KEY-----" in data:
            roles["server_key"] = name
            if b"CERTIFICATE-----" in data:
                roles["server_cert"] = name
        elif b"CERTIFICATE-----" in data:
            try:
                certificate = x509.load_pem_x509_certificate(data)
                constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
                is_ca = constraints.value.ca
            except (ValueError, x509.ExtensionNotFound):
                is_ca = False
            roles["client_ca" if is_ca else "server_cert"] = name
    required = {"client_ca"}
    # Neither a server certificate nor a key: the agent makes its own key (csr mode).
    if "server_cert" in roles or "server_key" in roles:
        required |= {"server_cert", "server_key"}
    missing = sorted(required - set(roles))
    if missing:
        raise DriverError(f"config drive lacks {', '.join(missing)} (got {sorted(config_drive)})")
    return roles


class ProcessCompute(ComputeDriver):
    """Runs each amphora as a ``keramos-agent`` child process on a loopback port."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        conf.register_opts(process_opts, group=GROUP)
        group = conf[GROUP]
        self.instances_dir = os.path.abspath(group.instances_dir)
        self.bind_host = group.bind_host
        self.python = group.python
        self.haproxy_binary = group.haproxy_binary
        self.stop_timeout = group.stop_timeout
        self.networks = parse_networks(group.networks)
        self.proxy = group.proxy
        self.ip_binary = group.ip_binary
        if self.networks and not self.proxy:
            raise ConfigError(f"[{GROUP}] networks is set but proxy is not")
        if self.networks and shutil.which(self.ip_binary) is None:
            raise ConfigError(f"[{GROUP}] ip_binary: {self.ip_binary} not found (iproute2)")
        self._namespaces: dict[str | None, NamespaceSockets] = {}
        if not os.access(self.python, os.X_OK):
            raise ConfigError(f"[{GROUP}] python: {self.python} is not executable")
        if shutil.which(self.haproxy_binary) is None:
            raise ConfigError(
                f"[{GROUP}] haproxy_binary: {self.haproxy_binary} not found "
                "(install the Debian package haproxy)"
            )
        try:
            os.makedirs(self.instances_dir, mode=0o700, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"[{GROUP}] instances_dir: {error}") from error
        self._lock = threading.Lock()
        self._processes: dict[str, _Process] = {}

    def _agent_config(
        self, amphora_id: str, directory: str, port: int, roles: dict[str, str], base: bytes | None
    ) -> bytes:
        parser = configparser.ConfigParser(interpolation=None)
        if base is not None:
            parser.read_string(base.decode("utf-8"))
        if not parser.has_section(AGENT_GROUP):
            parser.add_section(AGENT_GROUP)
        section = parser[AGENT_GROUP]
        section.update(
            bind_host=self.bind_host,
            bind_port=str(port),
            amphora_id=amphora_id,
            client_ca=os.path.join(directory, roles["client_ca"]),
            state_dir=os.path.join(directory, "state"),
            haproxy_binary=self.haproxy_binary,
        )
        if "server_cert" in roles:
            section.update(
                certificate_mode="controller",
                server_cert=os.path.join(directory, roles["server_cert"]),
                server_key=os.path.join(directory, roles["server_key"]),
            )
        else:
            section["certificate_mode"] = "csr"
            for name in ("server_cert", "server_key"):
                section.pop(name, None)
        if "activation_token" in roles:
            section["activation_token_file"] = os.path.join(directory, roles["activation_token"])
        text = io.StringIO()
        parser.write(text)
        return text.getvalue().encode()

    def build(
        self,
        amphora_id: str,
        image_id: str,
        config_drive: Mapping[str, bytes],
        *,
        flavor: str | None = None,
        network_id: str | None = None,
    ) -> str:
        """Write the config drive and start the agent; returns at once (status BUILDING)."""
        for name in config_drive:
            if not _DRIVE_NAME_RE.fullmatch(name) or name in _RESERVED_NAMES:
                raise DriverError(f"config drive file name {name!r} is not a plain file name")
        roles = _classify(config_drive)
        namespace = self.networks.get(network_id) if network_id else None
        compute_id = str(uuid.uuid4())
        directory = os.path.join(self.instances_dir, compute_id)
        os.makedirs(directory, mode=0o700)
        try:
            for name, data in config_drive.items():
                write_atomic(os.path.join(directory, name), data, 0o600, make_dirs=True)
            port = free_port(self.bind_host, self._sockets(namespace))
            base = config_drive.get(roles["config"]) if "config" in roles else None
            config_path = os.path.join(directory, AGENT_CONFIG_NAME)
            write_atomic(
                config_path,
                self._agent_config(amphora_id, directory, port, roles, base),
                make_dirs=True,
            )
            command = [self.python, "-m", "keramos.plugins.agent.main", "--config-file", config_path]
            if namespace:
                command = [self.ip_binary, "netns", "exec", namespace, *command]
            with open(os.path.join(directory, "agent.log"), "ab") as log:
                popen = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=directory,
                    start_new_session=True,
                )
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        with self._lock:
            self._processes[compute_id] = _Process(
                amphora_id, directory, port, popen, network_id, namespace
            )
        return compute_id

    def _sockets(self, namespace: str | None) -> NamespaceSockets:
        """The socket maker of ``namespace`` (one thread per namespace, kept)."""
        with self._lock:
            sockets = self._namespaces.get(namespace)
            if sockets is None:
                sockets = self._namespaces[namespace] = NamespaceSockets(namespace)
            return sockets

    def _route(self, process: _Process) -> dict[str, str | None]:
        if process.namespace is None:
            return {"network_id": process.network_id}
        return {"proxy": self.proxy, "network_id": process.network_id}

    def _process(self, compute_id: str) -> _Process:
        with self._lock:
            try:
                return self._processes[compute_id]
            except KeyError:
                raise NotFound(f"no instance {compute_id}") from None

    def get(self, compute_id: str) -> Instance:
        """BUILDING until the agent listens, ACTIVE while it runs, ERROR once it died."""
        process = self._process(compute_id)
        code = process.popen.poll()
        if code is not None:
            return Instance(
                compute_id,
                InstanceStatus.ERROR,
                address=self.bind_host,
                port=process.port,
                fault=f"agent exited with status {code}: {self._log_tail(process)}",
                **self._route(process),
            )
        try:
            self._sockets(process.namespace).connect(self.bind_host, process.port, 0.5).close()
            status = InstanceStatus.ACTIVE
        except OSError:
            status = InstanceStatus.BUILDING
        return Instance(
            compute_id, status, address=self.bind_host, port=process.port, **self._route(process)
        )

    def agent_pid(self, compute_id: str) -> int:
        """The process id of the instance's agent (also its process group id)."""
        return self._process(compute_id).popen.pid

    @staticmethod
    def _log_tail(process: _Process, size: int = 2000) -> str:
        try:
            with open(os.path.join(process.directory, "agent.log"), "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - size))
                return log.read().decode(errors="replace").strip()
        except OSError:
            return ""

    def running_instances(self) -> list[str]:
        """The compute ids of the instances whose agent process is alive."""
        with self._lock:
            processes = list(self._processes.items())
        return [compute_id for compute_id, process in processes if process.popen.poll() is None]

    def crash(self, compute_id: str) -> list[int]:
        """Make the instance fail as a host failure would: SIGKILL its agent's process group and
        the HAProxy processes it started, without any cleanup. Its files stay until
        :meth:`delete`; :meth:`get` reports it ERROR. Returns the killed process ids."""
        process = self._process(compute_id)
        killed = [process.popen.pid]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, signal.SIGKILL)
        process.popen.wait()
        state_dir = os.path.join(process.directory, "state")
        if os.path.isdir(state_dir):
            haproxy = HaproxyManager(state_dir, self.haproxy_binary)
            for lb_id in filter(is_valid_id, os.listdir(haproxy.root)):
                for pid in haproxy.running_pids(lb_id):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
        return killed

    def delete(self, compute_id: str) -> None:
        """Stop the agent and its HAProxy processes and remove the instance's files (idempotent)."""
        with self._lock:
            process = self._processes.pop(compute_id, None)
        if process is not None:
            self._stop(process)
        directory = os.path.join(self.instances_dir, compute_id)
        if os.path.isdir(directory) and os.path.dirname(directory) == self.instances_dir:
            shutil.rmtree(directory, ignore_errors=True)

    def find(self, amphora_id: str) -> list[str]:
        """The instances this driver started for ``amphora_id`` and has not deleted."""
        with self._lock:
            return [
                compute_id
                for compute_id, process in self._processes.items()
                if process.amphora_id == amphora_id
            ]

    def _stop(self, process: _Process) -> None:
        popen = process.popen
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGTERM)
            try:
                popen.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait()
        # gunicorn stops HAProxy when it exits cleanly; a killed agent leaves it behind.
        state_dir = os.path.join(process.directory, "state")
        if os.path.isdir(state_dir):
            HaproxyManager(state_dir, self.haproxy_binary).stop_all()

    def close(self) -> None:
        """Stop every agent this driver started."""
        with self._lock:
            compute_ids = list(self._processes)
        for compute_id in compute_ids:
            self.delete(compute_id)
        with self._lock:
            namespaces, self._namespaces = list(self._namespaces.values()), {}
        for sockets in namespaces:
            sockets.close()
