"""Every driver stands alone: one plugin author's driver among the noop drivers runs every flow.

For each driver kind, a minimal in-memory driver is written here as a plugin author would write
it (a subclass of the contract, inheriting nothing from the noop drivers) and swapped into the
testing kit, with the noop driver of every other kind. Every in-tree flow must succeed: no
driver may count on state another driver keeps, only on what their contracts hand over.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import secrets
import threading
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from oslo_config import cfg

from keramos.framework.contracts import (
    AmphoraCSR,
    AmphoraDriver,
    AmphoraEndpoint,
    CertGenerator,
    CertificateBundle,
    CertKind,
    CertManager,
    ComputeDriver,
    Driver,
    ImageStore,
    Instance,
    InstanceStatus,
    IssuedCertificate,
    KeyManager,
    NetworkDriver,
    Port,
    StateStore,
)
from keramos.framework.contracts.compute import ACTIVATION_TOKEN_FILE
from keramos.framework.errors import Conflict, DriverError, NotFound
from keramos.framework.images.cache import image_cache_opts
from keramos.framework.images.certificate_validation import register_opts
from keramos.framework.records import AmphoraRecord, AmphoraStatus, Record, utcnow
from keramos.framework.testing import InProcessWorker
from tests.unit.amphora_helpers import LB, certificate_mode
from tests.unit.image_helpers import issue, new_key, sign, write_ca_file

R = TypeVar("R", bound=Record)

_CA = b"-----BEGIN CERTIFICATE-----\nplugin-ca\n-----END CERTIFICATE-----\n"


class PluginCompute(ComputeDriver):
    """Instances kept in memory, each with the config drive it was handed, ACTIVE at once."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        self._lock = threading.Lock()
        self.instances: dict[str, tuple[Instance, dict[str, bytes]]] = {}

    def build(
        self,
        amphora_id: str,
        image_id: str,
        config_drive: Mapping[str, bytes],
        *,
        flavor: str | None = None,
    ) -> str:
        compute_id = f"vm-{uuid.uuid4()}"
        instance = Instance(compute_id, InstanceStatus.ACTIVE, address="192.0.2.10", port=9443)
        with self._lock:
            self.instances[compute_id] = (instance, dict(config_drive))
        return compute_id

    def get(self, compute_id: str) -> Instance:
        with self._lock:
            if compute_id not in self.instances:
                raise NotFound(f"no instance {compute_id}")
            return self.instances[compute_id][0]

    def delete(self, compute_id: str) -> None:
        with self._lock:
            self.instances.pop(compute_id, None)


class PluginNetwork(NetworkDriver):
    """Ports kept in memory."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        self._lock = threading.Lock()
        self.ports: dict[str, Port] = {}

    def plug(self, amphora_id: str, compute_id: str, network_id: str | None = None) -> Port:
        port = Port(f"port-{uuid.uuid4()}", network_id or "net-default", "198.51.100.7")
        with self._lock:
            self.ports[port.port_id] = port
        return port

    def unplug(self, port_id: str) -> None:
        with self._lock:
            self.ports.pop(port_id, None)


class PluginCertGenerator(CertGenerator):
    """Placeholder certificates with random serials; remembers the CRLs it published."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        self.crls: dict[str, list[str]] = {}

    @staticmethod
    def _certificate(common_name: str, kind: str, key: bytes | None, validity) -> IssuedCertificate:
        serial = secrets.token_hex(8)
        return IssuedCertificate(
            certificate_pem=f"-----BEGIN CERTIFICATE-----\n{common_name} {serial}\n"
            "-----END CERTIFICATE-----\n".encode(),
            private_key_pem=key,
            serial=serial,
            kind=kind,
            subject=common_name,
            not_after=utcnow() + (validity or dt.timedelta(days=30)),
            ca_certificate_pem=_CA,
        )

    def issue(
        self,
        common_name: str,
        kind: str,
        *,
        ip_addresses: Sequence[str] = (),
        validity: dt.timedelta | None = None,
    ) -> IssuedCertificate:
        key = b"-----BEGIN PRIVATE KEY-----\nplugin\n-----END PRIVATE KEY-----\n"
        return self._certificate(common_name, kind, key, validity)

    def sign_csr(
        self,
        csr_pem: bytes,
        kind: str,
        *,
        expected_common_name: str,
        validity: dt.timedelta | None = None,
    ) -> IssuedCertificate:
        csr = x509.load_pem_x509_csr(csr_pem)
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not csr.is_signature_valid or [n.value for n in names] != [expected_common_name]:
            raise DriverError(f"CSR refused for {expected_common_name}")
        return self._certificate(expected_common_name, kind, None, validity)

    def ca_certificate(self, kind: str) -> bytes:
        return _CA

    def publish_crl(self, kind: str, revoked: Mapping[str, dt.datetime]) -> bytes:
        self.crls[kind] = sorted(revoked)
        return f"-----BEGIN X509 CRL-----\n{' '.join(sorted(revoked))}\n-----END X509 CRL-----\n".encode()


class PluginCertManager(CertManager):
    """Bundles kept in memory by reference."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        self._lock = threading.Lock()
        self.bundles: dict[str, CertificateBundle] = {}

    def store(self, bundle: CertificateBundle, *, name: str) -> str:
        ref = f"plugin://{name}/{uuid.uuid4()}"
        with self._lock:
            self.bundles[ref] = bundle
        return ref

    def get(self, ref: str) -> CertificateBundle:
        with self._lock:
            if ref not in self.bundles:
                raise NotFound(f"no bundle {ref}")
            return self.bundles[ref]

    def delete(self, ref: str) -> None:
        with self._lock:
            self.bundles.pop(ref, None)


class PluginKeyManager(KeyManager):
    """Certificates kept in memory by uuid."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        self._lock = threading.Lock()
        self.certificates: dict[str, bytes] = {}

    def get_certificate(self, certificate_uuid: str) -> bytes:
        with self._lock:
            if certificate_uuid not in self.certificates:
                raise NotFound(f"no certificate {certificate_uuid}")
            return self.certificates[certificate_uuid]

    def store_certificate(self, certificate: bytes) -> str:
        certificate_uuid = str(uuid.uuid4())
        with self._lock:
            self.certificates[certificate_uuid] = certificate
        return certificate_uuid

    def delete(self, certificate_uuid: str) -> None:
        with self._lock:
            self.certificates.pop(certificate_uuid, None)


class PluginImageStore(ImageStore):
    """Images kept in memory with their properties; ``add`` is how this store gets them (the
    contract only reads images)."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        self.images: dict[str, tuple[bytes, dict[str, str]]] = {"img-1": (b"unsigned", {})}

    def add(self, image_id: str, data: bytes, properties: Mapping[str, str]) -> None:
        """Keep an image and its Glance-style properties."""
        self.images[image_id] = (data, dict(properties))

    def properties(self, image_id: str) -> dict[str, str]:
        if image_id not in self.images:
            raise NotFound(f"no image {image_id}")
        return dict(self.images[image_id][1])

    def chunks(self, image_id: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        data = self.images[image_id][0]
        return iter([data[start : start + chunk_size] for start in range(0, len(data), chunk_size)])


@dataclasses.dataclass
class _Agent:
    """What one simulated agent holds: its config drive, its own key, configs and certificate."""

    drive: dict[str, bytes]
    key: ec.EllipticCurvePrivateKey = dataclasses.field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    configs: dict[str, tuple[int, str]] = dataclasses.field(default_factory=dict)
    certificate: bytes | None = None


class PluginAmphora(AmphoraDriver):
    """Agents simulated in memory: each reads the config drive its instance was booted with."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        self._lock = threading.Lock()
        self.agents: dict[str, _Agent] = {}

    def instance_booted(self, amphora_id: str, config_drive: Mapping[str, bytes]) -> None:
        with self._lock:
            self.agents[amphora_id] = _Agent(dict(config_drive))

    def _agent(self, endpoint: AmphoraEndpoint) -> _Agent:
        agent = self.agents.get(endpoint.amphora_id)
        if agent is None:
            raise DriverError(f"no agent answers for {endpoint.amphora_id}", retryable=True)
        return agent

    def wait_until_reachable(self, endpoint: AmphoraEndpoint, timeout: float) -> dict[str, Any]:
        with self._lock:
            self._agent(endpoint)
        return {"amphora_id": endpoint.amphora_id, "api_version": "1.0"}

    def activate(self, endpoint: AmphoraEndpoint) -> str:
        with self._lock:
            token = self._agent(endpoint).drive.pop(ACTIVATION_TOKEN_FILE, None)
        if token is None:
            raise DriverError(f"agent {endpoint.amphora_id} is already activated")
        return token.decode("ascii")

    def fetch_csr(self, endpoint: AmphoraEndpoint, timeout: float) -> AmphoraCSR:
        with self._lock:
            agent = self._agent(endpoint)
            token = agent.drive[ACTIVATION_TOKEN_FILE].decode("ascii")
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, endpoint.amphora_id)])
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(agent.key, hashes.SHA256())
        public_key = agent.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return AmphoraCSR(csr.public_bytes(serialization.Encoding.PEM), token, public_key)

    def install_signed_certificate(
        self, endpoint: AmphoraEndpoint, certificate_pem: bytes, server_public_key_pem: bytes
    ) -> None:
        with self._lock:
            self._agent(endpoint).certificate = certificate_pem

    def upload_config(self, endpoint: AmphoraEndpoint, lb_id: str, config: str, version: int) -> None:
        with self._lock:
            self._agent(endpoint).configs[lb_id] = (version, config)

    def install_certificate(self, endpoint: AmphoraEndpoint, pem_bundle: bytes) -> None:
        with self._lock:
            self._agent(endpoint).certificate = pem_bundle

    def get_info(self, endpoint: AmphoraEndpoint) -> dict[str, Any]:
        with self._lock:
            configs = dict(self._agent(endpoint).configs)
        loadbalancers = {
            lb_id: {"config_version": version, "running_version": version, "running": True}
            for lb_id, (version, _config) in configs.items()
        }
        return {"amphora_id": endpoint.amphora_id, "api_version": "1.0", "loadbalancers": loadbalancers}

    def delete_config(self, endpoint: AmphoraEndpoint, lb_id: str) -> None:
        with self._lock:
            self._agent(endpoint).configs.pop(lb_id, None)


class PluginStateStore(StateStore):
    """Copies of records in dicts, one lock for all."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        self._lock = threading.Lock()
        self._tables: dict[type[Record], dict[str, Record]] = {}

    def save(self, record: R) -> R:
        with self._lock:
            self._tables.setdefault(type(record), {})[record.key_value] = copy.deepcopy(record)
        return record

    def insert_if_absent(self, record: R) -> tuple[R, bool]:
        with self._lock:
            table = self._tables.setdefault(type(record), {})
            if record.key_value in table:
                return copy.deepcopy(table[record.key_value]), False
            table[record.key_value] = copy.deepcopy(record)
        return record, True

    def get(self, record_type: type[R], key: str) -> R | None:
        with self._lock:
            return copy.deepcopy(self._tables.get(record_type, {}).get(key))

    def _change(self, record_type: type[R], key: str, changes: Mapping[str, Any]) -> R:
        names = {field.name for field in dataclasses.fields(record_type)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"{record_type.__name__} has no field {', '.join(unknown)}")
        record = self._tables.get(record_type, {}).get(key)
        if record is None:
            raise NotFound(f"no {record_type.__name__} {key}")
        for name, value in changes.items():
            setattr(record, name, copy.deepcopy(value))
        if "updated_at" in names:
            record.updated_at = utcnow()
        return copy.deepcopy(record)

    def update(self, record_type: type[R], key: str, **changes: Any) -> R:
        with self._lock:
            return self._change(record_type, key, changes)

    def update_if(
        self,
        record_type: type[R],
        key: str,
        expected: Mapping[str, Collection[Any]],
        **changes: Any,
    ) -> R:
        with self._lock:
            record = self._tables.get(record_type, {}).get(key)
            if record is None:
                raise NotFound(f"no {record_type.__name__} {key}")
            current = {name: getattr(record, name) for name in expected}
            if any(current[name] not in values for name, values in expected.items()):
                raise Conflict(f"{record_type.__name__} {key} holds {current}")
            return self._change(record_type, key, changes)

    def delete(self, record_type: type[R], key: str) -> None:
        with self._lock:
            self._tables.get(record_type, {}).pop(key, None)

    def find(self, record_type: type[R], **equals: Any) -> list[R]:
        with self._lock:
            found = [
                copy.deepcopy(record)
                for record in self._tables.get(record_type, {}).values()
                if all(getattr(record, name) == value for name, value in equals.items())
            ]
        return sorted(found, key=lambda record: getattr(record, "created_at", 0))


#: Driver kind -> the plugin author's driver of that kind.
PLUGIN_DRIVERS: dict[str, Callable[[cfg.ConfigOpts], Driver]] = {
    "compute": PluginCompute,
    "network": PluginNetwork,
    "cert_generator": PluginCertGenerator,
    "cert_manager": PluginCertManager,
    "key_manager": PluginKeyManager,
    "image_store": PluginImageStore,
    "amphora": PluginAmphora,
    "state_store": PluginStateStore,
}


def test_every_kind_has_a_plugin_driver_and_none_inherits_from_a_noop_driver():
    from keramos.framework.contracts import DRIVER_CONTRACTS

    assert sorted(PLUGIN_DRIVERS) == sorted(DRIVER_CONTRACTS)
    for kind, driver in PLUGIN_DRIVERS.items():
        assert issubclass(driver, DRIVER_CONTRACTS[kind])
        assert all(base.__module__ != "keramos.plugins.noop" for base in driver.__mro__)


@pytest.mark.parametrize("mode", ["controller", "csr"])
@pytest.mark.parametrize("kind", sorted(PLUGIN_DRIVERS))
def test_the_amphora_and_certificate_flows_succeed_with_one_plugin_driver(kind, mode):
    with InProcessWorker(conf_overrides=certificate_mode(mode), **{kind: PLUGIN_DRIVERS[kind]}) as worker:
        created = worker.run("create_amphora", {"amphora_id": "amp-1", "image_id": "img-1", "lb": LB})
        assert created["amphora"]["status"] == AmphoraStatus.READY
        assert created["amphora"]["activation_token_hash"] is None

        pushed = worker.run("push_config", {**LB, "amphora_ids": ["amp-1"]})
        assert pushed["running_version"] > created["amphora"]["config_version"]

        rotated = worker.run("rotate_certificate", {"amphora_id": "amp-1"})
        assert rotated["previous_serial"] == created["amphora"]["cert_serial"]

        issued = worker.run("issue_certificate", {"common_name": "controller-1", "kind": CertKind.CLIENT})
        serial = issued["issued_certificate"]["serial"]
        revoked = worker.run("revoke_certificate", {"serial": serial})
        assert revoked["kind"] == CertKind.CLIENT and revoked["crl_pem"]

        failed_over = worker.run("failover_amphora", {"amphora_id": "amp-1"})
        replacement = failed_over["amphora"]
        assert replacement["status"] == AmphoraStatus.READY and failed_over["moved_loadbalancers"] == ["lb-1"]
        assert worker.state_store.get(AmphoraRecord, "amp-1").status == AmphoraStatus.DELETED

        worker.run("delete_amphora", {"amphora_id": replacement["amphora_id"]})
        record = worker.state_store.get(AmphoraRecord, replacement["amphora_id"])
        assert record.status == AmphoraStatus.DELETED


@pytest.fixture(scope="module")
def image_pki() -> tuple[Any, Any]:
    """A root CA and an image signer it certified (P-256: quick to make)."""
    root = issue("Stand-alone Test Root CA", new_key("p256", 41), ca=True, path_length=0)
    return root, issue("stand-alone image signer", new_key("p256", 42), root)


@pytest.mark.parametrize("kind", sorted(PLUGIN_DRIVERS))
def test_verify_image_succeeds_with_one_plugin_driver(kind, image_pki, tmp_path):
    """The noop image store's images carry no signature, so the image is kept by the plugin
    image store (which noop has no counterpart for); the signing certificate goes through
    whichever key manager runs, by its contract."""
    root, signer = image_pki
    drivers: dict[str, Callable[[cfg.ConfigOpts], Driver]] = {"image_store": PluginImageStore}
    drivers[kind] = PLUGIN_DRIVERS[kind]
    with InProcessWorker(**drivers) as worker:
        register_opts(worker.conf)
        worker.conf.register_opts(image_cache_opts, group="image_cache")
        trusted = write_ca_file(tmp_path / "trusted.pem", root)
        worker.conf.set_override("trusted_ca_file", trusted, group="image_verification")
        data = b"amphora image " * 4096
        certificate_uuid = worker.drivers.key_manager.store_certificate(signer.certificate_pem)
        worker.drivers.image_store.add("img-signed", data, sign(data, signer, certificate_uuid))
        image = worker.run("verify_image", {"image_id": "img-signed"})["image"]
        assert image["status"] == "active" and image["certificate_uuid"] == certificate_uuid
