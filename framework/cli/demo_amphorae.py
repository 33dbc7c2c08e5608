"""The second part of ``keramos demo``: real amphorae, a load balancer, a crash and its failover.

Same in-process worker and ``fake://`` transport as the first part, but real drivers: a local
dual CA (server and client certificates from different CAs), the process compute driver (each
amphora is a ``keramos-agent`` under gunicorn speaking mutual TLS, running a real HAProxy), the
REST amphora driver, a file image store holding an image signed with a certificate kept in the
local key manager, and a health manager listening for the agents' signed heartbeats.

Needs the ``haproxy`` program (Debian package ``haproxy``); without it this part explains what it
would show and is skipped.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import io
import os
import secrets
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keramos.framework import loader
from keramos.framework.contracts import CertKind
from keramos.framework.files import write_atomic
from keramos.framework.images import signature
from keramos.framework.observers import RunObserver
from keramos.framework.pki.ca import create_dual_ca
from keramos.framework.records import AmphoraRecord, AmphoraStatus, LoadBalancerRecord
from keramos.framework.testing import InProcessWorker

IMAGE_ID = "amphora-haproxy-signed"
LB_ID = "lb-demo"
BACKEND_BODY = b"hello from the demo backend\n"
HEARTBEAT_TIMEOUT = 3.0
FAILOVER_WAIT = 90.0

Step = Callable[[str], None]


#: The entry points of the real drivers this part runs on, by kind.
DRIVERS = {
    "compute": "process",
    "amphora": "rest",
    "cert_generator": "local",
    "cert_manager": "local",
    "image_store": "file",
    "key_manager": "local",
}


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Backend(http.server.BaseHTTPRequestHandler):
    """The member behind the load balancer: answers every GET with :data:`BACKEND_BODY`."""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.send_response(200)
        self.send_header("Content-Length", str(len(BACKEND_BODY)))
        self.end_headers()
        self.wfile.write(BACKEND_BODY)

    def log_message(self, *args: Any) -> None:
        """Quiet: the demo prints what the requests got."""


@contextlib.contextmanager
def _backend() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    thread = threading.Thread(target=server.serve_forever, name="demo-backend", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _send_traffic(port: int, count: int = 20) -> Counter[str]:
    """GET / through the load balancer ``count`` times; what came back, counted."""
    outcomes: Counter[str] = Counter()
    for _ in range(count):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                body = response.read()
            outcomes["answered by the backend" if body == BACKEND_BODY else "wrong answer"] += 1
        except (urllib.error.URLError, OSError) as error:
            outcomes[f"failed ({getattr(error, 'reason', error)})"] += 1
    return outcomes


def _show_traffic(port: int, *, settle: float = 10.0) -> None:
    """Send traffic until every request is answered (HAProxy may still be starting), print it."""
    deadline = time.monotonic() + settle
    while True:
        outcomes = _send_traffic(port)
        if set(outcomes) == {"answered by the backend"} or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    shown = ", ".join(f"{count} {what}" for what, count in outcomes.most_common())
    print(f"    20 requests to the load balancer at 127.0.0.1:{port}: {shown}")


def _image_signing_pki(directory: str) -> tuple[str, ec.EllipticCurvePrivateKey, bytes]:
    """An image-signing CA (trusted by the verifier) and a signing certificate it issued.

    Returns the CA certificate file, the signing key and the signing certificate (PEM).
    """
    now = dt.datetime.now(dt.timezone.utc)

    def certificate(name: str, key, issuer_name: str, issuer_key, *, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=not ca, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
        )
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_certificate = certificate("Keramos demo image signing CA", ca_key, "Keramos demo image signing CA",
                                 ca_key, ca=True)
    signing_key = ec.generate_private_key(ec.SECP256R1())
    signing_certificate = certificate("Keramos demo image signer", signing_key,
                                      "Keramos demo image signing CA", ca_key, ca=False)
    ca_file = os.path.join(directory, "image_signing_ca.pem")
    write_atomic(ca_file, ca_certificate.public_bytes(serialization.Encoding.PEM))
    return ca_file, signing_key, signing_certificate.public_bytes(serialization.Encoding.PEM)


def _controller_client_certificate(directory: str, passphrase: str) -> dict[str, str]:
    """The dual CA and the controller's client certificate; the options that point at them."""
    ca_dir = os.path.join(directory, "ca")
    authorities = create_dual_ca(ca_dir, passphrase.encode())
    controller = authorities[CertKind.CLIENT].issue("keramos-controller", validity=dt.timedelta(days=1))
    client_cert = os.path.join(directory, "controller_client_cert.pem")
    client_key = os.path.join(directory, "controller_client_key.pem")
    write_atomic(client_cert, controller.certificate_pem)
    write_atomic(client_key, controller.private_key_pem or b"")
    print(f"    server CA {ca_dir}/server_ca.pem signs amphora server certificates")
    print(f"    client CA {ca_dir}/client_ca.pem signs the controller's client certificate only")
    return {
        "ca_dir": ca_dir,
        "server_ca": os.path.join(ca_dir, "server_ca.pem"),
        "client_cert": client_cert,
        "client_key": client_key,
    }


def _overrides(pki: dict[str, str], passphrase: str, signing_ca: str,
               heartbeat_port: int, heartbeat_key: str, haproxy: str) -> dict[str, dict[str, Any]]:
    return {
        "drivers": dict(DRIVERS),
        "certificates": {"ca_dir": pki["ca_dir"], "ca_passphrase": passphrase},
        "cert_manager_local": {"passphrase": passphrase},
        "compute_process": {"haproxy_binary": haproxy},
        "amphora_rest": {
            "controller_client_cert": pki["client_cert"],
            "controller_client_key": pki["client_key"],
            "server_ca": pki["server_ca"],
            "connect_timeout": 2.0,
            "retries": 1,
            "backoff": 0.2,
        },
        "image_verification": {"trusted_ca_file": signing_ca},
        "amphora": {
            "require_signed_images": True,
            "active_timeout": 60.0,
            "agent_timeout": 60.0,
            "controller_heartbeat_endpoints": [f"127.0.0.1:{heartbeat_port}"],
            "heartbeat_interval": 0.5,
        },
        "health": {
            "bind_host": "127.0.0.1",
            "bind_port": heartbeat_port,
            "heartbeat_key": heartbeat_key,
            "heartbeat_timeout": HEARTBEAT_TIMEOUT,
            "check_interval": 0.5,
        },
    }


def _add_signed_image(worker: InProcessWorker, signing_key, signing_certificate: bytes) -> None:
    key_manager = worker.drivers.key_manager
    certificate_uuid = key_manager.store_certificate(signing_certificate)
    data = os.urandom(4 << 20)
    spec = signature.sign_chunks([data], signing_key, certificate_uuid=certificate_uuid)
    worker.drivers.image_store.add(IMAGE_ID, io.BytesIO(data), spec.to_properties())
    print(f"    image {IMAGE_ID}: 4 MiB, signed ECDSA P-256/SHA-256, signing certificate "
          f"{certificate_uuid} in the key manager")


def _create(worker: InProcessWorker, amphora_id: str) -> AmphoraRecord:
    request_id = worker.cast("create_amphora", {"amphora_id": amphora_id, "image_id": IMAGE_ID})
    worker.wait(request_id, timeout=120)
    record = worker.state_store.get(AmphoraRecord, amphora_id)
    print(f"    {amphora_id} is {record.status}: agent at https://{record.address}:{record.agent_port}"
          f" (mutual TLS), server certificate {record.cert_serial}, activation token spent: "
          f"{record.activation_token_hash is None}")
    return record


def _wait_for_failover(worker: InProcessWorker, amphora_id: str) -> AmphoraRecord:
    """Wait until the health manager's failover replaced ``amphora_id``; return the replacement."""
    store = worker.state_store
    deadline = time.monotonic() + FAILOVER_WAIT
    while time.monotonic() < deadline:
        if store.get(AmphoraRecord, amphora_id).status == AmphoraStatus.DELETED:
            replacements = [
                record for record in store.find(AmphoraRecord, status=AmphoraStatus.READY)
                if record.amphora_id.startswith(f"{amphora_id}-fo-")
            ]
            if replacements:
                return replacements[-1]
        time.sleep(0.2)
    raise TimeoutError(f"{amphora_id} was not failed over within {FAILOVER_WAIT:g}s")


def run(state_path: str, step: Step, progress: RunObserver) -> None:
    """Part two of the demo (see the module docstring).

    ``step`` prints a numbered heading; ``progress`` watches the flows (prints their tasks).
    """
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    step("real amphorae: process compute driver, mutual TLS, signed image, health manager")
    if haproxy is None:
        print("    skipped: the haproxy program is not installed (Debian: apt-get install haproxy).")
        print("    With it, this part boots two amphorae as real agent processes from a signed image,")
        print("    load-balances traffic through them, crashes one and shows the health manager")
        print("    failing it over.")
        return
    passphrase = secrets.token_urlsafe(16)
    heartbeat_key = secrets.token_urlsafe(32)
    heartbeat_port = _free_port(socket.SOCK_DGRAM)
    pki = _controller_client_certificate(state_path, passphrase)
    signing_ca, signing_key, signing_certificate = _image_signing_pki(state_path)
    overrides = _overrides(pki, passphrase, signing_ca, heartbeat_port, heartbeat_key, haproxy)
    health_manager = loader.load_program("health_manager")
    with InProcessWorker(state_path=os.path.join(state_path, "worker"), conf_overrides=overrides,
                         observers=[progress]) as worker, _backend() as backend_port:
        _add_signed_image(worker, signing_key, signing_certificate)
        manager = health_manager(worker.conf, worker.state_store, worker.cast).start()
        try:
            print(f"    health manager listening for signed heartbeats on udp 127.0.0.1:{heartbeat_port}, "
                  f"failing over amphorae silent for {HEARTBEAT_TIMEOUT:g}s")
            _lifecycle(worker, step, backend_port, manager.stop)
        finally:
            manager.stop()
            worker.drivers.compute.close()


def _lifecycle(
    worker: InProcessWorker, step: Step, backend_port: int, stop_health_manager: Callable[[], None]
) -> None:
    step("create_amphora amp-a, then amp-b: image verified, certificate issued, agent booted, activated")
    first = _create(worker, "amp-a")
    second = _create(worker, "amp-b")

    listener_port = _free_port(socket.SOCK_STREAM)
    step(f"push_config {LB_ID} to both amphorae: HTTP on 127.0.0.1:{listener_port} -> the backend")
    description = {
        "lb_id": LB_ID,
        "amphora_ids": [first.amphora_id, second.amphora_id],
        "listeners": [{"id": "web", "protocol": "HTTP", "address": "127.0.0.1", "port": listener_port,
                       "default_pool": "app"}],
        "pools": [{"id": "app", "protocol": "HTTP", "health_check": False,
                   "members": [{"id": "backend-1", "address": "127.0.0.1", "port": backend_port}]}],
    }
    result = worker.wait(worker.cast("push_config", description), timeout=60)
    print(f"    both amphorae run configuration version {result['running_version']} "
          "(each agent checked it with haproxy -c, then reloaded HAProxy)")
    _show_traffic(listener_port)

    step("crash amp-a (SIGKILL its agent and HAProxy, as a dead host would)")
    crashed_at = time.monotonic()
    killed = worker.drivers.compute.crash(first.compute_id)
    print(f"    killed processes {', '.join(map(str, killed))}; amp-b still serves:")
    _show_traffic(listener_port)

    step("the health manager notices amp-a's heartbeats stopped and casts failover_amphora")
    replacement = _wait_for_failover(worker, first.amphora_id)
    members = (worker.state_store.get(LoadBalancerRecord, LB_ID).description or {})["amphora_ids"]
    print(f"    {replacement.amphora_id} is READY, amp-a is DELETED "
          f"({time.monotonic() - crashed_at:.1f}s after the crash); {LB_ID} runs on {', '.join(members)}")
    _show_traffic(listener_port)

    step("delete_amphora for both: instances, certificates and files go")
    # With the demo's 3-second heartbeat timeout, a busy machine can delay one amphora's
    # heartbeats while the other is deleted: a failover must not race the deletions.
    stop_health_manager()
    for amphora_id in (second.amphora_id, replacement.amphora_id):
        worker.wait(worker.cast("delete_amphora", {"amphora_id": amphora_id}), timeout=60)
    left = worker.state_store.find(AmphoraRecord, status=AmphoraStatus.READY)
    running = worker.drivers.compute.running_instances()
    print(f"    amphorae READY: {len(left)}; agent processes left: {len(running)}")
