"""Noop drivers: one per kind, doing nothing but remembering what they were asked.

They make a worker runnable with no infrastructure at all (the demo, unit tests, benchmarks). What
they "create" goes to their ledger (:mod:`keramos.plugins.noop_ledger`; by default
``$state_path/noop-ledger.sqlite``), so that a worker killed and restarted on the same
``state_path`` resumes its flows on them, and tests check that a reverted flow left nothing
behind and count every boot and delete, across a kill -9 too.

Ledger kinds (the actions that change them; the subject of their entries):

* ``compute``: ``build``, ``delete`` (amphora id); the value holds the config drive.
* ``network``: ``plug``, ``unplug`` (amphora id).
* ``cert_generator``: ``issue``, ``sign_csr`` (common name), by serial.
* ``cert_generator.crl``: ``publish_crl`` (certificate kind), by certificate kind.
* ``cert_manager``: ``store``, ``delete`` (the name given to ``store``).
* ``key_manager``: ``store``, ``delete`` (no subject).
* ``amphora.token``: ``boot``, ``activate`` (amphora id).
* ``amphora.server_key``: ``make_key``, ``boot`` (amphora id).
* ``amphora.certificate``: ``install_certificate``, ``install_signed_certificate`` (amphora id).
* ``amphora.config``: ``upload_config``, ``delete_config`` (amphora id).

The image store creates nothing (every image exists and is empty), so it keeps no ledger.

Every call of the drivers' contracts sleeps ``[noop_drivers] call_delay`` seconds (0 by default)
before it answers, outside any ledger lock: benchmarks and soak tests simulate the latency of real
infrastructure (I/O-bound drivers) with it. What a driver calls on itself, and the snapshot
properties tests read, do not sleep.

The simulated agents' keys (csr mode) and activation tokens, the config drives (with a server key
in controller mode) and the bundles handed to the noop certificate manager are stored plain in the
ledger: encrypting them would need a key that a restarted worker can read, kept beside the file
with the same owner, which protects nothing the file's ``0600`` mode does not. They are test keys
of simulated agents; real keys belong to the ``local`` (encrypted) or ``castellan`` certificate
manager and to real agents.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import functools
import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

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
)
from keramos.framework.contracts.compute import ACTIVATION_TOKEN_FILE
from keramos.framework.errors import AlreadyActivated, DriverError, NotFound
from keramos.framework.records import utcnow
from keramos.plugins.noop_ledger import GROUP, Ledger, open_ledger, register_opts

_PLACEHOLDER_CA = b"-----BEGIN CERTIFICATE-----\nnoop-ca\n-----END CERTIFICATE-----\n"

COMPUTE = "compute"
NETWORK = "network"
CERT_GENERATOR = "cert_generator"
CERT_GENERATOR_CRL = "cert_generator.crl"
CERT_MANAGER = "cert_manager"
KEY_MANAGER = "key_manager"
AMPHORA_TOKEN = "amphora.token"
AMPHORA_SERVER_KEY = "amphora.server_key"
AMPHORA_CERTIFICATE = "amphora.certificate"
AMPHORA_CONFIG = "amphora.config"


def _encode(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _decode(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def _decode_all(texts: Mapping[str, str]) -> dict[str, bytes]:
    return {name: base64.b64decode(text) for name, text in texts.items()}


class _Delayed(Driver):
    """A noop driver: its contract calls sleep ``[noop_drivers] call_delay`` seconds, read once
    when it is built."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        register_opts(conf)
        self.call_delay: float = conf[GROUP].call_delay


_Params = ParamSpec("_Params")
_Result = TypeVar("_Result")
_Driver = TypeVar("_Driver", bound=_Delayed)


def _driver_call(
    method: Callable[Concatenate[_Driver, _Params], _Result],
) -> Callable[Concatenate[_Driver, _Params], _Result]:
    """Mark a contract method: it sleeps the driver's ``call_delay`` before it answers."""

    @functools.wraps(method)
    def call(self: _Driver, *args: _Params.args, **kwargs: _Params.kwargs) -> _Result:
        if self.call_delay:
            time.sleep(self.call_delay)
        return method(self, *args, **kwargs)

    return call


class NoopCompute(_Delayed, ComputeDriver):
    """Instances that are ACTIVE at once, on 127.0.0.1, kept in the ledger with their config
    drives (kind ``compute``)."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        self.ledger: Ledger = open_ledger(conf)

    def new_compute_id(self, amphora_id: str) -> str:
        """The compute id of a new instance for ``amphora_id``: a random uuid."""
        return str(uuid.uuid4())

    @_driver_call
    def build(
        self,
        amphora_id: str,
        image_id: str,
        config_drive: Mapping[str, bytes],
        *,
        flavor: str | None = None,
        network_id: str | None = None,
    ) -> str:
        compute_id = self.new_compute_id(amphora_id)
        instance = Instance(
            compute_id, InstanceStatus.ACTIVE, address="127.0.0.1", network_id=network_id
        )
        value = {
            "instance": dataclasses.asdict(instance),
            "image_id": image_id,
            "flavor": flavor,
            "config_drive": {name: _encode(bytes(data)) for name, data in config_drive.items()},
        }
        self.ledger.put(COMPUTE, compute_id, value, action="build", subject=amphora_id)
        return compute_id

    @_driver_call
    def get(self, compute_id: str) -> Instance:
        value = self.ledger.get(COMPUTE, compute_id)
        if value is None:
            raise NotFound(f"no instance {compute_id}")
        return Instance(**value["instance"])

    @_driver_call
    def delete(self, compute_id: str) -> None:
        self.ledger.remove(COMPUTE, compute_id, action="delete")

    @_driver_call
    def find(self, amphora_id: str) -> list[str]:
        return list(self.ledger.live(COMPUTE, subject=amphora_id))

    def close(self) -> None:
        self.ledger.close()

    @property
    def instances(self) -> dict[str, Instance]:
        """Every live instance by compute id (a snapshot read from the ledger)."""
        return {key: Instance(**value["instance"]) for key, value in self.ledger.live(COMPUTE).items()}

    @property
    def config_drives(self) -> dict[str, dict[str, bytes]]:
        """The config drive of every live instance by compute id (a snapshot)."""
        return {key: _decode_all(value["config_drive"]) for key, value in self.ledger.live(COMPUTE).items()}


class NoopNetwork(_Delayed, NetworkDriver):
    """Ports on 127.0.0.1, kept in the ledger (kind ``network``)."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        self.ledger: Ledger = open_ledger(conf)

    @_driver_call
    def plug(self, amphora_id: str, compute_id: str, network_id: str | None = None) -> Port:
        port = Port(str(uuid.uuid4()), network_id, "127.0.0.1")
        value = {"port": dataclasses.asdict(port), "compute_id": compute_id}
        self.ledger.put(NETWORK, port.port_id, value, action="plug", subject=amphora_id)
        return port

    @_driver_call
    def unplug(self, port_id: str) -> None:
        self.ledger.remove(NETWORK, port_id, action="unplug")

    def find(self, amphora_id: str) -> list[Port]:
        return [Port(**value["port"]) for value in self.ledger.live(NETWORK, subject=amphora_id).values()]

    def close(self) -> None:
        self.ledger.close()

    @property
    def ports(self) -> dict[str, Port]:
        """Every plugged port by port id (a snapshot read from the ledger)."""
        return {key: Port(**value["port"]) for key, value in self.ledger.live(NETWORK).items()}


class NoopCertGenerator(_Delayed, CertGenerator):
    """Placeholder certificates with real random serials; nothing is signed. Every certificate
    issued is noted in the ledger (kind ``cert_generator``, by serial), every CRL published too
    (kind ``cert_generator.crl``, by certificate kind)."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        self.ledger: Ledger = open_ledger(conf)

    def _issue(
        self, common_name: str, kind: str, key: bytes | None, validity: dt.timedelta | None, action: str
    ) -> IssuedCertificate:
        if kind not in CertKind.ALL:
            raise ValueError(f"kind must be one of {CertKind.ALL}, not {kind!r}")
        serial = secrets.token_hex(16)
        not_after = utcnow() + (validity or dt.timedelta(days=365))
        value = {"kind": kind, "not_after": not_after.isoformat()}
        self.ledger.put(CERT_GENERATOR, serial, value, action=action, subject=common_name)
        return IssuedCertificate(
            certificate_pem=f"-----BEGIN CERTIFICATE-----\nnoop {serial}\n"
            "-----END CERTIFICATE-----\n".encode(),
            private_key_pem=key,
            serial=serial,
            kind=kind,
            subject=common_name,
            not_after=not_after,
            ca_certificate_pem=_PLACEHOLDER_CA,
        )

    @_driver_call
    def issue(
        self,
        common_name: str,
        kind: str,
        *,
        ip_addresses: Sequence[str] = (),
        validity: dt.timedelta | None = None,
    ) -> IssuedCertificate:
        key = b"-----BEGIN PRIVATE KEY-----\nnoop\n-----END PRIVATE KEY-----\n"
        return self._issue(common_name, kind, key, validity, "issue")

    @_driver_call
    def sign_csr(
        self,
        csr_pem: bytes,
        kind: str,
        *,
        expected_common_name: str,
        validity: dt.timedelta | None = None,
    ) -> IssuedCertificate:
        return self._issue(expected_common_name, kind, None, validity, "sign_csr")

    @_driver_call
    def ca_certificate(self, kind: str) -> bytes:
        return _PLACEHOLDER_CA

    @_driver_call
    def publish_crl(self, kind: str, revoked: Mapping[str, dt.datetime]) -> bytes:
        value = {"revoked": {serial: when.isoformat() for serial, when in revoked.items()}}
        self.ledger.put(CERT_GENERATOR_CRL, kind, value, action="publish_crl", subject=kind)
        return b"-----BEGIN X509 CRL-----\nnoop\n-----END X509 CRL-----\n"

    def close(self) -> None:
        self.ledger.close()


class NoopCertManager(_Delayed, CertManager):
    """Bundles kept in the ledger by a random reference (kind ``cert_manager``)."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        self.ledger: Ledger = open_ledger(conf)

    @_driver_call
    def store(self, bundle: CertificateBundle, *, name: str) -> str:
        ref = f"noop:{name}:{uuid.uuid4()}"
        value = {
            "certificate": _encode(bundle.certificate),
            "private_key": _encode(bundle.private_key),
            "intermediates": [_encode(pem) for pem in bundle.intermediates],
            "private_key_passphrase": _encode(bundle.private_key_passphrase),
        }
        self.ledger.put(CERT_MANAGER, ref, value, action="store", subject=name)
        return ref

    @staticmethod
    def _bundle(value: Mapping[str, Any]) -> CertificateBundle:
        return CertificateBundle(
            certificate=base64.b64decode(value["certificate"]),
            private_key=_decode(value["private_key"]),
            intermediates=tuple(base64.b64decode(pem) for pem in value["intermediates"]),
            private_key_passphrase=_decode(value["private_key_passphrase"]),
        )

    @_driver_call
    def get(self, ref: str) -> CertificateBundle:
        value = self.ledger.get(CERT_MANAGER, ref)
        if value is None:
            raise NotFound(f"no certificate bundle {ref}")
        return self._bundle(value)

    @_driver_call
    def delete(self, ref: str) -> None:
        self.ledger.remove(CERT_MANAGER, ref, action="delete")

    def find(self, name: str) -> list[str]:
        return list(self.ledger.live(CERT_MANAGER, subject=name))

    def close(self) -> None:
        self.ledger.close()

    @property
    def bundles(self) -> dict[str, CertificateBundle]:
        """Every stored bundle by reference (a snapshot read from the ledger)."""
        return {ref: self._bundle(value) for ref, value in self.ledger.live(CERT_MANAGER).items()}


class NoopKeyManager(_Delayed, KeyManager):
    """Certificates kept in the ledger by uuid (kind ``key_manager``)."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        self.ledger: Ledger = open_ledger(conf)

    @_driver_call
    def get_certificate(self, certificate_uuid: str) -> bytes:
        value = self.ledger.get(KEY_MANAGER, certificate_uuid)
        if value is None:
            raise NotFound(f"no certificate {certificate_uuid}")
        return base64.b64decode(value["certificate"])

    @_driver_call
    def store_certificate(self, certificate: bytes) -> str:
        new_uuid = str(uuid.uuid4())
        self.ledger.put(KEY_MANAGER, new_uuid, {"certificate": _encode(certificate)}, action="store")
        return new_uuid

    @_driver_call
    def delete(self, certificate_uuid: str) -> None:
        self.ledger.remove(KEY_MANAGER, certificate_uuid, action="delete")

    def close(self) -> None:
        self.ledger.close()

    @property
    def certificates(self) -> dict[str, bytes]:
        """Every stored certificate by uuid (a snapshot read from the ledger)."""
        return {key: base64.b64decode(value["certificate"]) for key, value in self.ledger.live(KEY_MANAGER).items()}


class NoopImageStore(_Delayed, ImageStore):
    """Every image exists, is empty and carries no signature (nothing created, no ledger)."""

    @_driver_call
    def properties(self, image_id: str) -> dict[str, str]:
        return {}

    @_driver_call
    def chunks(self, image_id: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        return iter(())


def _config_key(amphora_id: str, lb_id: str) -> str:
    return json.dumps([amphora_id, lb_id])


class NoopAmphora(_Delayed, AmphoraDriver):
    """Agents that answer at once and remember the configs and certificates pushed to them.

    Each simulated agent reads the activation token of the config drive its instance was booted
    with (:meth:`instance_booted`, whatever compute driver booted it), hands it over once at
    activation and forgets it, and in csr mode makes a real EC key and CSR, so that the flows'
    checks run. Its state lives in the ledger (kinds ``amphora.*``), so that a restarted worker
    finds its agents as they were.
    """

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        self.ledger: Ledger = open_ledger(conf)

    @_driver_call
    def instance_booted(self, amphora_id: str, config_drive: Mapping[str, bytes]) -> None:
        token = config_drive.get(ACTIVATION_TOKEN_FILE)
        with self.ledger.writing() as ledger:
            if token is None:
                ledger.remove(AMPHORA_TOKEN, amphora_id, action="boot")
            else:
                value = {"token": _encode(bytes(token))}
                ledger.put(AMPHORA_TOKEN, amphora_id, value, action="boot", subject=amphora_id)
            ledger.remove(AMPHORA_SERVER_KEY, amphora_id, action="boot")

    def _token(self, amphora_id: str, *, spend: bool) -> str:
        """The agent's activation token; ``spend`` deletes it, as activation does."""
        if spend:
            value = self.ledger.remove(AMPHORA_TOKEN, amphora_id, action="activate")
        else:
            value = self.ledger.get(AMPHORA_TOKEN, amphora_id)
        if value is None and spend and self.ledger.count(AMPHORA_TOKEN, "activate", subject=amphora_id):
            raise AlreadyActivated(f"amphora {amphora_id}: already activated")
        if value is None:
            raise DriverError(f"amphora {amphora_id}: no activation token (already activated, or never booted)")
        return base64.b64decode(value["token"]).decode("ascii")

    @staticmethod
    def _hello(endpoint: AmphoraEndpoint) -> dict[str, Any]:
        """What the simulated agent answers when asked who it is."""
        return {"amphora_id": endpoint.amphora_id, "api_version": "1.0", "driver": "noop"}

    @_driver_call
    def wait_until_reachable(self, endpoint: AmphoraEndpoint, timeout: float) -> dict[str, Any]:
        return self._hello(endpoint)

    @_driver_call
    def activate(self, endpoint: AmphoraEndpoint) -> str:
        return self._token(endpoint.amphora_id, spend=True)

    @_driver_call
    def fetch_csr(self, endpoint: AmphoraEndpoint, timeout: float) -> AmphoraCSR:
        token = self._token(endpoint.amphora_id, spend=False)

        def new_key() -> dict[str, Any]:
            pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            return {"key": pem.decode("ascii")}

        value = self.ledger.get_or_put(
            AMPHORA_SERVER_KEY, endpoint.amphora_id, new_key, action="make_key", subject=endpoint.amphora_id
        )
        key = _load_key(value)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, endpoint.amphora_id)])
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
        public_key = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return AmphoraCSR(csr.public_bytes(serialization.Encoding.PEM), token, public_key)

    def _install(self, amphora_id: str, pem: bytes, action: str) -> None:
        self.ledger.put(AMPHORA_CERTIFICATE, amphora_id, {"pem": _encode(pem)}, action=action, subject=amphora_id)

    @_driver_call
    def install_signed_certificate(
        self, endpoint: AmphoraEndpoint, certificate_pem: bytes, server_public_key_pem: bytes
    ) -> None:
        self._install(endpoint.amphora_id, certificate_pem, "install_signed_certificate")

    @_driver_call
    def upload_config(
        self, endpoint: AmphoraEndpoint, lb_id: str, config: str, version: int
    ) -> None:
        value = {"amphora_id": endpoint.amphora_id, "lb_id": lb_id, "version": version, "config": config}
        key = _config_key(endpoint.amphora_id, lb_id)
        self.ledger.put(AMPHORA_CONFIG, key, value, action="upload_config", subject=endpoint.amphora_id)

    @_driver_call
    def install_certificate(self, endpoint: AmphoraEndpoint, pem_bundle: bytes) -> None:
        self._install(endpoint.amphora_id, pem_bundle, "install_certificate")

    @_driver_call
    def get_info(self, endpoint: AmphoraEndpoint) -> dict[str, Any]:
        versions = {
            value["lb_id"]: {"config_version": value["version"], "running_version": value["version"], "running": True}
            for value in self.ledger.live(AMPHORA_CONFIG, subject=endpoint.amphora_id).values()
        }
        return {**self._hello(endpoint), "loadbalancers": versions}

    @_driver_call
    def delete_config(self, endpoint: AmphoraEndpoint, lb_id: str) -> None:
        self.ledger.remove(AMPHORA_CONFIG, _config_key(endpoint.amphora_id, lb_id), action="delete_config")

    def close(self) -> None:
        self.ledger.close()

    @property
    def activation_tokens(self) -> dict[str, bytes]:
        """The unspent activation token of every booted agent by amphora id (a snapshot)."""
        return {key: base64.b64decode(value["token"]) for key, value in self.ledger.live(AMPHORA_TOKEN).items()}

    @property
    def configs(self) -> dict[tuple[str, str], tuple[int, str]]:
        """``(amphora_id, lb_id)`` -> ``(version, config)`` of every config uploaded (a snapshot)."""
        return {
            (value["amphora_id"], value["lb_id"]): (value["version"], value["config"])
            for value in self.ledger.live(AMPHORA_CONFIG).values()
        }

    @property
    def certificates(self) -> dict[str, bytes]:
        """The certificate (or PEM bundle) installed on every agent by amphora id (a snapshot)."""
        return {key: base64.b64decode(value["pem"]) for key, value in self.ledger.live(AMPHORA_CERTIFICATE).items()}

    @property
    def server_keys(self) -> dict[str, ec.EllipticCurvePrivateKey]:
        """The key every agent made in csr mode by amphora id (a snapshot)."""
        return {key: _load_key(value) for key, value in self.ledger.live(AMPHORA_SERVER_KEY).items()}


def _load_key(value: Mapping[str, Any]) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(value["key"].encode("ascii"), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DriverError("the noop ledger holds a server key that is not an EC key")
    return key
