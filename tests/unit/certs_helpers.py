"""Helpers for the certificate tests: a dual CA in a temporary directory, drivers built on it."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from keramos.framework.config import make_conf
from keramos.framework.contracts import AmphoraEndpoint, Drivers
from keramos.framework.errors import DriverError
from keramos.framework.pki.ca import create_dual_ca
from keramos.framework.pki.options import register_opts
from keramos.plugins import noop
from keramos.plugins.certificates.generator import LocalCertGenerator
from keramos.plugins.certificates.local_store import LocalCertManager, local_store_opts
from keramos.plugins.state_store.memory import MemoryStateStore

PASSPHRASE = b"correct horse battery staple"
STORE_PASSPHRASE = "store passphrase"


def make_ca_dir(tmp_path, *, key_type: str = "ec-p256") -> str:
    """Create a dual CA under ``tmp_path/ca`` and return the directory."""
    ca_dir = os.path.join(str(tmp_path), "ca")
    create_dual_ca(ca_dir, PASSPHRASE, key_type=key_type)
    return ca_dir


def cert_conf(tmp_path, ca_dir: str, **certificates):
    """A configuration for the local generator and the local store under ``tmp_path``."""
    values = {"ca_dir": ca_dir, "ca_passphrase": PASSPHRASE.decode(), **certificates}
    conf = make_conf(config_files=[], overrides={"DEFAULT": {"state_path": str(tmp_path)}})
    register_opts(conf)
    for name, value in values.items():
        conf.set_override(name, value, group="certificates")
    return conf


def make_generator(tmp_path, ca_dir: str | None = None, **certificates) -> LocalCertGenerator:
    """A local generator on a new (or the given) dual CA."""
    ca_dir = ca_dir or make_ca_dir(tmp_path)
    return LocalCertGenerator(cert_conf(tmp_path, ca_dir, **certificates))


def make_store(tmp_path, passphrase: str = STORE_PASSPHRASE, path: str | None = None):
    """A local certificate manager under ``tmp_path/bundles``."""
    conf = make_conf(config_files=[], overrides={"DEFAULT": {"state_path": str(tmp_path)}})
    conf.register_opts(local_store_opts, group="cert_manager_local")
    conf.set_override("passphrase", passphrase, group="cert_manager_local")
    conf.set_override(
        "storage_path", path or os.path.join(str(tmp_path), "bundles"), group="cert_manager_local"
    )
    return LocalCertManager(conf)


def make_drivers(tmp_path, **given) -> Drivers:
    """Drivers with the local generator and store, a memory state store, noop for the rest."""
    conf = make_conf(config_files=[], overrides={"DEFAULT": {"state_path": str(tmp_path)}})
    drivers = {
        "state_store": MemoryStateStore(conf),
        "compute": noop.NoopCompute(conf),
        "network": noop.NoopNetwork(conf),
        "key_manager": noop.NoopKeyManager(conf),
        "image_store": noop.NoopImageStore(conf),
        "amphora": noop.NoopAmphora(conf),
    }
    drivers.update(given)
    drivers.setdefault("cert_generator", make_generator(tmp_path))
    drivers.setdefault("cert_manager", make_store(tmp_path))
    return Drivers(**drivers)


class UnreachableAmphora(noop.NoopAmphora):
    """An amphora driver whose agents refuse every certificate push."""

    def install_certificate(self, endpoint: AmphoraEndpoint, pem_bundle: bytes) -> None:
        raise DriverError(f"amphora {endpoint.amphora_id} unreachable", retryable=True)


def make_csr(common_name: str | None, *, dns_names: Sequence[str] = (), key=None) -> bytes:
    """A PEM CSR for ``common_name`` (no CN if ``None``) with the given DNS SANs."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    attributes = (
        [] if common_name is None else [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes))
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in dns_names]), critical=False
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def tamper_signature(csr_pem: bytes) -> bytes:
    """The same CSR with the last byte of its signature changed: it no longer verifies."""
    der = bytearray(x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)


def rsa_key(bits: int = 2048):
    """An RSA private key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def utc(*args: int) -> dt.datetime:
    """A UTC datetime."""
    return dt.datetime(*args, tzinfo=dt.timezone.utc)
