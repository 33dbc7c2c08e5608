"""Noop drivers: one per kind, doing nothing but remembering what they were asked.

They make a worker runnable with no infrastructure at all (the demo, unit tests, benchmarks), and
they keep what they "created" in memory so that tests can check a reverted flow left nothing behind.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keramos.framework.contracts import (
    AmphoraCSR,
    AmphoraDriver,
    AmphoraEndpoint,
    CertGenerator,
    CertificateBundle,
    CertKind,
    CertManager,
    ComputeDriver,
    ImageStore,
    Instance,
    InstanceStatus,
    IssuedCertificate,
    KeyManager,
    NetworkDriver,
    Port,
)
from keramos.framework.contracts.compute import ACTIVATION_TOKEN_FILE
from keramos.framework.errors import DriverError, NotFound
from keramos.framework.records import utcnow

_PLACEHOLDER_CA = b"-----BEGIN CERTIFICATE-----\nnoop-ca\n-----END CERTIFICATE-----\n"


class NoopCompute(ComputeDriver):
    """Instances that are ACTIVE at once, on 127.0.0.1, kept in memory with their config drives."""

    def __init__(self, conf) -> None:
        super().__init__(conf)
        self._lock = threading.Lock()
        self.instances: dict[str, Instance] = {}
        self.config_drives: dict[str, dict[str, bytes]] = {}

    def build(
        self,
        amphora_id: str,
        image_id: str,
        config_drive: Mapping[str, bytes],
        *,
        flavor: str | None = None,
    ) -> str:
        compute_id = str(uuid.uuid4())
        with self._lock:
            self.instances[compute_id] = Instance(
                compute_id, InstanceStatus.ACTIVE, address="127.0.0.1"
            )
            self.config_drives[compute_id] = dict(config_drive)
        return compute_id

    def get(self, compute_id: str) -> Instance:
        with self._lock:
            try:
                return self.instances[compute_id]
            except KeyError:
                raise NotFound(f"no instance {compute_id}") from None

    def delete(self, compute_id: str) -> None:
        with self._lock:
            self.instances.pop(compute_id, None)
            self.config_drives.pop(compute_id, None)


class NoopNetwork(NetworkDriver):
    """Ports that exist only in memory."""

    def __init__(self, conf) -> None:
        super().__init__(conf)
        self._lock = threading.Lock()
        self.ports: dict[str, Port] = {}

    def plug(self, amphora_id: str, compute_id: str, network_id: str | None = None) -> Port:
        port = Port(str(uuid.uuid4()), network_id, "127.0.0.1")
        with self._lock:
            self.ports[port.port_id] = port
        return port

    def unplug(self, port_id: str) -> None:
        with self._lock:
            self.ports.pop(port_id, None)


class NoopCertGenerator(CertGenerator):
    """Placeholder certificates with real random serials; nothing is signed."""

    def _issue(self, common_name: str, kind: str, key: bytes | None, validity) -> IssuedCertificate:
        if kind not in CertKind.ALL:
            raise ValueError(f"kind must be one of {CertKind.ALL}, not {kind!r}")
        serial = secrets.token_hex(16)
        return IssuedCertificate(
            certificate_pem=f"-----BEGIN CERTIFICATE-----\nnoop {serial}\n"
            "-----END CERTIFICATE-----\n".encode(),
            private_key_pem=key,
            serial=serial,
            kind=kind,
            subject=common_name,
            not_after=utcnow() + (validity or dt.timedelta(days=365)),
            ca_certificate_pem=_PLACEHOLDER_CA,
        )

    def issue(
        self,
        common_name: str,
        kind: str,
        *,
        ip_addresses: Sequence[str] = (),
        validity: dt.timedelta | None = None,
    ) -> IssuedCertificate:
        key = b"-----BEGIN PRIVATE KEY-----\nnoop\n-----END PRIVATE KEY-----\n"
        return self._issue(common_name, kind, key, validity)

    def sign_csr(
        self,
        csr_pem: bytes,
        kind: str,
        *,
        expected_common_name: str,
        validity: dt.timedelta | None = None,
    ) -> IssuedCertificate:
        return self._issue(expected_common_name, kind, None, validity)

    def ca_certificate(self, kind: str) -> bytes:
        return _PLACEHOLDER_CA

    def publish_crl(self, kind: str, revoked: Mapping[str, dt.datetime]) -> bytes:
        return b"-----BEGIN X509 CRL-----\nnoop\n-----END X509 CRL-----\n"


class NoopCertManager(CertManager):
    """Bundles kept in memory by a random reference."""

    def __init__(self, conf) -> None:
        super().__init__(conf)
        self._lock = threading.Lock()
        self.bundles: dict[str, CertificateBundle] = {}

    def store(self, bundle: CertificateBundle, *, name: str) -> str:
        ref = f"noop:{name}:{uuid.uuid4()}"
        with self._lock:
            self.bundles[ref] = bundle
        return ref

    def get(self, ref: str) -> CertificateBundle:
        with self._lock:
            try:
                return self.bundles[ref]
            except KeyError:
                raise NotFound(f"no certificate bundle {ref}") from None

    def delete(self, ref: str) -> None:
        with self._lock:
            self.bundles.pop(ref, None)


class NoopKeyManager(KeyManager):
    """Certificates kept in memory by uuid."""

    def __init__(self, conf) -> None:
        super().__init__(conf)
        self._lock = threading.Lock()
        self.certificates: dict[str, bytes] = {}

    def get_certificate(self, certificate_uuid: str) -> bytes:
        with self._lock:
            try:
                return self.certificates[certificate_uuid]
            except KeyError:
                raise NotFound(f"no certificate {certificate_uuid}") from None

    def store_certificate(self, certificate: bytes) -> str:
        new_uuid = str(uuid.uuid4())
        with self._lock:
            self.certificates[new_uuid] = certificate
        return new_uuid

    def delete(self, certificate_uuid: str) -> None:
        with self._lock:
            self.certificates.pop(certificate_uuid, None)


class NoopImageStore(ImageStore):
    """Every image exists, is empty and carries no signature."""

    def properties(self, image_id: str) -> dict[str, str]:
        return {}

    def chunks(self, image_id: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        return iter(())


class NoopAmphora(AmphoraDriver):
    """Agents that answer at once and remember the configs and certificates pushed to them.

    Each simulated agent reads the activation token of the config drive its instance was booted
    with (:meth:`instance_booted`, whatever compute driver booted it), hands it over once at
    activation and forgets it, and in csr mode makes a real EC key (kept in memory) and CSR, so
    that the flows' checks run.
    """

    def __init__(self, conf) -> None:
        super().__init__(conf)
        self._lock = threading.Lock()
        self.activation_tokens: dict[str, bytes] = {}
        self.configs: dict[tuple[str, str], tuple[int, str]] = {}
        self.certificates: dict[str, bytes] = {}
        self.server_keys: dict[str, ec.EllipticCurvePrivateKey] = {}

    def instance_booted(self, amphora_id: str, config_drive: Mapping[str, bytes]) -> None:
        with self._lock:
            token = config_drive.get(ACTIVATION_TOKEN_FILE)
            if token is None:
                self.activation_tokens.pop(amphora_id, None)
            else:
                self.activation_tokens[amphora_id] = bytes(token)
            self.server_keys.pop(amphora_id, None)

    def _token(self, amphora_id: str, *, spend: bool) -> str:
        """The agent's activation token; ``spend`` deletes it, as activation does."""
        with self._lock:
            tokens = self.activation_tokens
            token = tokens.pop(amphora_id, None) if spend else tokens.get(amphora_id)
        if token is None:
            raise DriverError(f"amphora {amphora_id}: no activation token (already activated, or never booted)")
        return token.decode("ascii")

    def wait_until_reachable(self, endpoint: AmphoraEndpoint, timeout: float) -> dict[str, Any]:
        return {"amphora_id": endpoint.amphora_id, "api_version": "1.0", "driver": "noop"}

    def activate(self, endpoint: AmphoraEndpoint) -> str:
        return self._token(endpoint.amphora_id, spend=True)

    def fetch_csr(self, endpoint: AmphoraEndpoint, timeout: float) -> AmphoraCSR:
        token = self._token(endpoint.amphora_id, spend=False)
        with self._lock:
            key = self.server_keys.get(endpoint.amphora_id)
            if key is None:
                key = self.server_keys[endpoint.amphora_id] = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, endpoint.amphora_id)])
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
        public_key = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return AmphoraCSR(csr.public_bytes(serialization.Encoding.PEM), token, public_key)

    def install_signed_certificate(
        self, endpoint: AmphoraEndpoint, certificate_pem: bytes, server_public_key_pem: bytes
    ) -> None:
        with self._lock:
            self.certificates[endpoint.amphora_id] = certificate_pem

    def upload_config(
        self, endpoint: AmphoraEndpoint, lb_id: str, config: str, version: int
    ) -> None:
        with self._lock:
            self.configs[(endpoint.amphora_id, lb_id)] = (version, config)

    def install_certificate(self, endpoint: AmphoraEndpoint, pem_bundle: bytes) -> None:
        with self._lock:
            self.certificates[endpoint.amphora_id] = pem_bundle

    def get_info(self, endpoint: AmphoraEndpoint) -> dict[str, Any]:
        with self._lock:
            versions = {
                lb_id: {"config_version": version, "running_version": version, "running": True}
                for (amphora_id, lb_id), (version, _config) in self.configs.items()
                if amphora_id == endpoint.amphora_id
            }
        return {**self.wait_until_reachable(endpoint, 0), "loadbalancers": versions}

    def delete_config(self, endpoint: AmphoraEndpoint, lb_id: str) -> None:
        with self._lock:
            self.configs.pop((endpoint.amphora_id, lb_id), None)
