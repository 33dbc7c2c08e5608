"""Keys and PEM: generating, serialising and parsing keys and certificates, with clear errors."""

from __future__ import annotations

from typing import Union

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keramos.framework.errors import ConfigError
from keramos.framework.pki import errors

PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]

#: Key types a CA or a leaf may use; the first is the default.
KEY_TYPES: tuple[str, ...] = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")
DEFAULT_KEY_TYPE = KEY_TYPES[0]


def generate_private_key(key_type: str = DEFAULT_KEY_TYPE) -> PrivateKey:
    """A new private key of ``key_type`` (one of :data:`KEY_TYPES`)."""
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type in ("rsa-2048", "rsa-3072", "rsa-4096"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    raise ConfigError(f"unknown key type {key_type!r}; choose one of {', '.join(KEY_TYPES)}")


def hash_for(key: PrivateKey) -> hashes.HashAlgorithm:
    """The digest ``key`` signs with: SHA-384 for curves above P-256, SHA-256 otherwise."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def private_key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """``key`` as PKCS#8 PEM, encrypted with ``passphrase`` when one is given."""
    encryption = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def load_private_key(data: bytes, passphrase: bytes | None, *, what: str) -> PrivateKey:
    """Parse a PEM private key, telling a wrong passphrase from malformed data.

    Raises :class:`~errors.MalformedPEM` or :class:`~errors.BadPassphrase`, naming ``what``.
    """
    encrypted = b"ENCRYPTED" in data
    if encrypted and not passphrase:
        raise errors.BadPassphrase(f"{what} is encrypted and no passphrase was given")
    try:
        key = serialization.load_pem_private_key(data, passphrase if encrypted else None)
    except ValueError as error:
        if encrypted and b"-----BEGIN" in data:
            raise errors.BadPassphrase(f"{what}: the passphrase does not decrypt it") from None
        raise errors.MalformedPEM(f"{what} is not a PEM private key ({error})") from None
    except (TypeError, UnsupportedAlgorithm) as error:
        raise errors.MalformedPEM(f"{what} is not a usable PEM private key ({error})") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise errors.MalformedPEM(f"{what} is a {type(key).__name__}, not an EC or RSA key")
    return key


def load_certificate(data: bytes, *, what: str) -> x509.Certificate:
    """Parse one PEM certificate; raise :class:`~errors.MalformedPEM` naming ``what``."""
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as error:
        raise errors.MalformedPEM(f"{what} is not a PEM certificate ({error})") from None


def key_matches(certificate: x509.Certificate, key: PrivateKey) -> bool:
    """Whether ``key`` is the private key of ``certificate``."""
    return certificate.public_key() == key.public_key()
