"""Test PKI and signed images for the image verification tests (generated with cryptography)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import io
import json
import os
from collections.abc import Iterator

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, padding, rsa
from cryptography.x509.oid import NameOID

from keramos.framework.images import signature
from keramos.framework.images.cache import image_cache_opts
from keramos.framework.images.certificate_validation import register_opts
from keramos.framework.testing import InProcessWorker
from keramos.plugins.images.file_store import FileImageStore
from keramos.plugins.images.key_managers import LocalKeyManager

NOW = dt.datetime.now(dt.timezone.utc)
DAY = dt.timedelta(days=1)


@dataclasses.dataclass
class Issued:
    """A key and its certificate."""

    key: signature.PrivateKey
    certificate: x509.Certificate

    @property
    def certificate_pem(self) -> bytes:
        """The certificate, PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The private key, unencrypted PKCS#8 PEM."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@functools.lru_cache(maxsize=None)
def _cached_key(kind: str, index: int) -> signature.PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(65537, 2048)
    if kind == "dsa":
        return dsa.generate_private_key(2048)
    curves = {"p256": ec.SECP256R1, "p384": ec.SECP384R1, "p521": ec.SECP521R1}
    return ec.generate_private_key(curves[kind]())


def new_key(kind: str = "rsa", index: int = 0) -> signature.PrivateKey:
    """A private key of ``kind`` (rsa, dsa, p256, p384, p521); the same for the same index."""
    return _cached_key(kind, index)


def issue(
    common_name: str,
    key: signature.PrivateKey,
    issuer: Issued | None = None,
    *,
    ca: bool = False,
    path_length: int | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    digital_signature: bool | None = True,
    rsa_pss: bool = False,
    hash_algorithm: hashes.HashAlgorithm | None = None,
) -> Issued:
    """Issue a certificate for ``key``, self-signed when ``issuer`` is None.

    ``digital_signature=None`` leaves out the key usage extension of an end-entity certificate.
    ``rsa_pss`` signs with RSA-PSS (the issuer's key must be RSA).
    """
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - DAY)
        .not_valid_after(not_after or NOW + 30 * DAY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()),
            critical=False,
        )
    )
    if ca or digital_signature is not None:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=bool(digital_signature) and not ca,
                content_commitment=False,
                key_encipherment=not ca and not digital_signature,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    hash_algorithm = hash_algorithm or hashes.SHA256()
    extra = {}
    if rsa_pss:
        extra["rsa_padding"] = padding.PSS(
            mgf=padding.MGF1(hash_algorithm), salt_length=padding.PSS.DIGEST_LENGTH
        )
    return Issued(key, builder.sign(signer_key, hash_algorithm, **extra))


@dataclasses.dataclass
class Pki:
    """A root CA, an intermediate CA and signing certificates of every key type."""

    root: Issued
    intermediate: Issued
    signers: dict[str, Issued]


@functools.lru_cache(maxsize=1)
def pki() -> Pki:
    """The shared test PKI: root (RSA) -> intermediate (P-384, RSA-PSS signed) -> signers."""
    root = issue("Keramos Test Root CA", new_key("rsa", 1), ca=True, path_length=1)
    intermediate = issue(
        "Keramos Test Image CA", new_key("p384", 1), root, ca=True, path_length=0, rsa_pss=True
    )
    signers = {
        kind: issue(f"image signer {kind}", new_key(kind), intermediate)
        for kind in ("rsa", "dsa", "p256", "p384", "p521")
    }
    return Pki(root, intermediate, signers)


def chunked(data: bytes, size: int = 4096) -> Iterator[bytes]:
    """``data`` in chunks of ``size``."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def sign(
    data: bytes, signer: Issued, certificate_uuid: str, hash_method: str = "SHA-256", **kwargs
) -> dict[str, str]:
    """The Glance signature properties of ``data`` signed by ``signer``."""
    spec = signature.sign_chunks(
        chunked(data),
        signer.key,
        certificate_uuid=certificate_uuid,
        hash_method=hash_method,
        **kwargs,
    )
    return spec.to_properties()


def write_ca_file(path: os.PathLike | str, *certificates: Issued) -> str:
    """Write a PEM bundle of ``certificates`` to ``path``; return the path."""
    with open(path, "wb") as pem_file:
        for issued in certificates:
            pem_file.write(issued.certificate_pem)
    return str(path)


def write_json(path: os.PathLike | str, document: dict) -> None:
    """Write ``document`` as JSON."""
    with open(path, "w", encoding="utf-8") as json_file:
        json.dump(document, json_file)


#: The drivers of a worker that verifies signed images: a file image store, a local key manager.
SIGNED_IMAGE_DRIVERS = {"image_store": FileImageStore, "key_manager": LocalKeyManager}


def add_signed_image(
    worker: InProcessWorker, directory: os.PathLike | str, image_id: str = "img-signed", data: bytes = b""
) -> str:
    """Trust the test root CA (in ``directory``) and add ``image_id`` signed by the test signer
    to a worker on :data:`SIGNED_IMAGE_DRIVERS`; return ``image_id``."""
    data = data or b"amphora image " * 4096
    register_opts(worker.conf)
    worker.conf.register_opts(image_cache_opts, group="image_cache")
    ca_file = write_ca_file(os.path.join(directory, "trusted.pem"), pki().root)
    worker.conf.set_override("trusted_ca_file", ca_file, group="image_verification")
    signer = pki().signers["rsa"]
    certificate_uuid = worker.drivers.key_manager.store_certificate(
        signer.certificate_pem + pki().intermediate.certificate_pem
    )
    worker.drivers.image_store.add(image_id, io.BytesIO(data), sign(data, signer, certificate_uuid))
    return image_id
