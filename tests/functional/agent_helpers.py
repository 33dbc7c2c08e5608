"""Helpers for the agent tests: two CAs and leaf certificates, HAProxy checks, a backend, ports.

The CAs are made here with ``cryptography`` so that the agent tests depend on no certificate
driver: a server CA signs amphora certificates (SAN = amphora id), a distinct client CA signs
the controller's certificate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import http.client
import http.server
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keramos.framework.config import make_conf
from keramos.framework.contracts import AmphoraEndpoint, InstanceStatus
from keramos.plugins.amphora_rest import RestAmphoraDriver
from keramos.plugins.amphora_rest import list_opts as rest_list_opts
from keramos.plugins.compute_process import ProcessCompute
from keramos.plugins.compute_process import list_opts as process_list_opts
from tests.conftest import require

BACKEND_BODY = b"hello from the backend\n"


@dataclasses.dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def bundle(self) -> bytes:
        """Certificate followed by its key (Octavia's ``server.pem`` layout)."""
        return self.cert_pem + self.key_pem


@dataclasses.dataclass(frozen=True)
class CA:
    """A certificate authority able to sign leaf certificates."""

    certificate: x509.Certificate
    key: rsa.RSAPrivateKey

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate as PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write(self, directory: str, stem: str) -> tuple[str, str]:
        """Write ``<stem>_cert.pem`` and ``<stem>_key.pem`` (unencrypted, 0600) into ``directory``,
        for a program that signs with this CA from files; return their paths."""
        key_pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        paths = (os.path.join(directory, f"{stem}_cert.pem"), os.path.join(directory, f"{stem}_key.pem"))
        for path, content in zip(paths, (self.cert_pem, key_pem), strict=True):
            with open(path, "wb") as stream:
                stream.write(content)
            os.chmod(path, 0o600)
        return paths


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str) -> CA:
    """A self-signed CA valid for a day."""
    key = _key()
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return CA(certificate, key)


def issue(
    ca: CA | None,
    common_name: str,
    *,
    server: bool,
    not_after: dt.datetime | None = None,
    not_before: dt.datetime | None = None,
) -> Issued:
    """A leaf certificate for ``common_name`` (also its SAN), signed by ``ca`` or self-signed."""
    key = _key()
    now = dt.datetime.now(dt.timezone.utc)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.certificate.subject if ca else _name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(minutes=5))
        .not_valid_after(not_after or now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
    )
    certificate = builder.sign(ca.key if ca else key, hashes.SHA256())
    return Issued(certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key))


@dataclasses.dataclass(frozen=True)
class Pki:
    """The two CAs of a deployment and the controller's client certificate, written to disk."""

    server_ca: CA
    client_ca: CA
    controller: Issued
    directory: str

    def path(self, name: str) -> str:
        """Path of a file written by :func:`make_pki`."""
        return os.path.join(self.directory, name)

    def config_drive(self, amphora_id: str) -> dict[str, bytes]:
        """A config drive for ``amphora_id``: its server certificate and key, the client CA."""
        server = issue(self.server_ca, amphora_id, server=True)
        return {
            "amphora_server_cert.pem": server.cert_pem,
            "amphora_server_key.pem": server.key_pem,
            "client_ca_cert.pem": self.client_ca.cert_pem,
        }

    def rest_overrides(self) -> dict[str, str]:
        """``[amphora_rest]`` options for a controller using this PKI."""
        return {
            "controller_client_cert": self.path("controller_client_cert.pem"),
            "controller_client_key": self.path("controller_client_key.pem"),
            "server_ca": self.path("server_ca_cert.pem"),
            "connect_timeout": 2.0,
            "read_timeout": 30.0,
            "backoff": 0.05,
        }


def make_pki(directory: str) -> Pki:
    """Make two CAs and a controller client certificate, and write the controller's files."""
    server_ca = make_ca("Keramos test server CA")
    client_ca = make_ca("Keramos test client CA")
    controller = issue(client_ca, "keramos-controller", server=False)
    pki = Pki(server_ca, client_ca, controller, directory)
    files = {
        "server_ca_cert.pem": server_ca.cert_pem,
        "controller_client_cert.pem": controller.cert_pem,
        "controller_client_key.pem": controller.key_pem,
    }
    for name, data in files.items():
        with open(pki.path(name), "wb") as stream:
            stream.write(data)
        os.chmod(pki.path(name), 0o600)
    return pki


def require_haproxy() -> str:
    """The haproxy executable; fails under CI=true when it is missing, skips otherwise."""
    path = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    require(path is not None, "haproxy (Debian package haproxy)")
    assert path is not None
    return path


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _BackendHandler(http.server.BaseHTTPRequestHandler):
    body = BACKEND_BODY

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        return


@contextlib.contextmanager
def http_backend(body: bytes = BACKEND_BODY) -> Iterator[int]:
    """An HTTP server on 127.0.0.1 answering every GET with ``body``; yields its port."""
    handler = type("BackendHandler", (_BackendHandler,), {"body": body})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def make_drivers(state_path: str, pki: Pki) -> tuple[ProcessCompute, RestAmphoraDriver]:
    """A process compute driver and a rest amphora driver sharing one configuration."""
    conf = make_conf([], config_files=[], overrides={"DEFAULT": {"state_path": state_path}})
    for group, opts in process_list_opts() + rest_list_opts():
        conf.register_opts(opts, group=group)
    for name, value in pki.rest_overrides().items():
        conf.set_override(name, value, group="amphora_rest")
    conf.set_override("haproxy_binary", require_haproxy(), group="compute_process")
    return ProcessCompute(conf), RestAmphoraDriver(conf)


def boot(
    compute: ProcessCompute, pki: Pki, amphora_id: str, timeout: float = 30.0
) -> tuple[str, AmphoraEndpoint]:
    """Build an amphora, wait until it is ACTIVE, return its compute id and agent endpoint."""
    compute_id = compute.build(amphora_id, "image", pki.config_drive(amphora_id))
    deadline = time.monotonic() + timeout
    while True:
        instance = compute.get(compute_id)
        if instance.status == InstanceStatus.ACTIVE:
            return compute_id, AmphoraEndpoint(amphora_id, instance.address, instance.port)
        assert instance.status == InstanceStatus.BUILDING, instance.fault
        assert time.monotonic() < deadline, "agent did not start"
        time.sleep(0.05)


@dataclasses.dataclass
class AgentProcess:
    """A ``keramos-agent`` started by :func:`run_agent`: its port, files and mTLS client."""

    amphora_id: str
    port: int
    directory: str
    pki: Pki
    popen: subprocess.Popen

    def path(self, *names: str) -> str:
        """A path inside the agent's directory (``state`` is its state_dir)."""
        return os.path.join(self.directory, *names)

    def client_context(self) -> ssl.SSLContext:
        """A client context trusting the server CA and presenting the controller certificate.

        The agent's certificate names the amphora id, not 127.0.0.1: the name is not checked.
        """
        context = ssl.create_default_context(cadata=self.pki.server_ca.cert_pem.decode())
        context.check_hostname = False
        context.load_cert_chain(
            self.pki.path("controller_client_cert.pem"), self.pki.path("controller_client_key.pem")
        )
        return context

    def connection(self, timeout: float = 30.0) -> http.client.HTTPSConnection:
        """A new mTLS connection to the agent."""
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.client_context(), timeout=timeout
        )


def require_keepalived() -> str:
    """The keepalived executable; fails under CI=true when it is missing, skips otherwise."""
    path = shutil.which("keepalived") or shutil.which("keepalived", path="/usr/sbin:/usr/local/sbin")
    require(path is not None, "keepalived (Debian package keepalived)")
    assert path is not None
    return path


@contextlib.contextmanager
def run_agent(
    directory: str, pki: Pki, amphora_id: str, timeout: float = 30.0, **options: str
) -> Iterator[AgentProcess]:
    """Start a real ``keramos-agent`` (gunicorn, mTLS) on a loopback port with ``options`` in
    its ``[amphora_agent]`` section and HOME in ``directory``; stop it (and what it runs) after.
    """
    drive = pki.config_drive(amphora_id)
    for name, data in drive.items():
        with open(os.path.join(directory, name), "wb") as stream:
            stream.write(data)
        os.chmod(os.path.join(directory, name), 0o600)
    port = free_port()
    settings = {
        "bind_host": "127.0.0.1",
        "bind_port": str(port),
        "amphora_id": amphora_id,
        "server_cert": os.path.join(directory, "amphora_server_cert.pem"),
        "server_key": os.path.join(directory, "amphora_server_key.pem"),
        "client_ca": os.path.join(directory, "client_ca_cert.pem"),
        "state_dir": os.path.join(directory, "state"),
        "haproxy_binary": require_haproxy(),
        **options,
    }
    config_path = os.path.join(directory, "keramos-agent.conf")
    with open(config_path, "w", encoding="utf-8") as stream:
        stream.write("[amphora_agent]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
    os.makedirs(os.path.join(directory, "home"), exist_ok=True)
    environment = {
        key: value for key, value in os.environ.items() if key != "XDG_RUNTIME_DIR"
    }
    environment["HOME"] = os.path.join(directory, "home")
    with open(os.path.join(directory, "agent.log"), "ab") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "keramos.plugins.agent.main", "--config-file", config_path],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=directory,
            env=environment,
            start_new_session=True,
        )
    agent = AgentProcess(amphora_id, port, directory, pki, popen)
    try:
        deadline = time.monotonic() + timeout
        while not _listening(port):
            assert popen.poll() is None, open(agent.path("agent.log"), errors="replace").read()
            assert time.monotonic() < deadline, "agent did not start"
            time.sleep(0.05)
        yield agent
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def send_chunked(
    agent: AgentProcess, method: str, path: str, body: bytes, chunk_size: int = 1000
) -> tuple[int | None, bytes]:
    """Send ``body`` with ``Transfer-Encoding: chunked`` (written by hand) over mTLS.

    Returns the status and body of the answer, or ``(None, b"")`` when the agent closed the
    connection before answering (it may, for a body far over its limit).
    """
    connection = agent.connection()
    try:
        connection.putrequest(method, path)
        connection.putheader("Transfer-Encoding", "chunked")
        connection.putheader("Content-Type", "application/octet-stream")
        connection.endheaders()
        for start in range(0, len(body), chunk_size):
            chunk = body[start : start + chunk_size]
            connection.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        connection.send(b"0\r\n\r\n")
        response = connection.getresponse()
        return response.status, response.read()
    except (ConnectionError, ssl.SSLError, http.client.HTTPException):
        return None, b""
    finally:
        connection.close()
