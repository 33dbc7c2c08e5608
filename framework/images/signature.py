"""Glance image signatures: parse the signature properties, verify the data as it streams.

Glance (Mitaka onward) signs ``HASH(image data)``: the data is hashed once, and the digest is
signed with the private key of a certificate kept in a key manager. The properties are:

``img_signature``
    The signature, base64.
``img_signature_hash_method``
    ``SHA-224``, ``SHA-256``, ``SHA-384`` or ``SHA-512``.
``img_signature_key_type``
    ``RSA-PSS``, ``DSA``, ``ECC_SECP256R1``, ``ECC_SECP384R1`` or ``ECC_SECP521R1``.
``img_signature_certificate_uuid``
    The uuid of the signing certificate in the key manager.
``mask_gen_algorithm`` and ``pss_salt_length``
    RSA-PSS only: ``MGF1`` (the only one defined) and the salt length. Without a salt length any
    length is accepted, so that both maximum-length salts (Glance, OpenSSL 3.0) and
    digest-length salts (OpenSSL 3.1 and later) verify.

:class:`StreamingVerifier` hashes chunks as they arrive and verifies the digest with
``Prehashed`` at the end: memory stays flat whatever the image size. Every failure is a
:class:`SignatureVerificationError` whose ``reason`` (one of :class:`Reason`) tells why.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import queue
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, padding, rsa, utils

from keramos.framework.errors import KeramosError

SIGNATURE = "img_signature"
HASH_METHOD = "img_signature_hash_method"
KEY_TYPE = "img_signature_key_type"
CERTIFICATE_UUID = "img_signature_certificate_uuid"
MASK_GEN_ALGORITHM = "mask_gen_algorithm"
PSS_SALT_LENGTH = "pss_salt_length"

#: Properties every signed image carries.
REQUIRED_PROPERTIES: tuple[str, ...] = (SIGNATURE, HASH_METHOD, KEY_TYPE, CERTIFICATE_UUID)

#: Glance hash method -> (hashlib name, cryptography hash class).
HASH_METHODS: dict[str, tuple[str, type[hashes.HashAlgorithm]]] = {
    "SHA-224": ("sha224", hashes.SHA224),
    "SHA-256": ("sha256", hashes.SHA256),
    "SHA-384": ("sha384", hashes.SHA384),
    "SHA-512": ("sha512", hashes.SHA512),
}

#: Glance key types of elliptic-curve signatures -> curve.
EC_KEY_TYPES: dict[str, type[ec.EllipticCurve]] = {
    "ECC_SECP256R1": ec.SECP256R1,
    "ECC_SECP384R1": ec.SECP384R1,
    "ECC_SECP521R1": ec.SECP521R1,
}
RSA_PSS = "RSA-PSS"
DSA = "DSA"
KEY_TYPES: tuple[str, ...] = (RSA_PSS, DSA, *EC_KEY_TYPES)
MASK_GEN_ALGORITHMS: tuple[str, ...] = ("MGF1",)

if TYPE_CHECKING:
    # Only for annotations: cryptography deprecates DSA and warns whenever its key classes are
    # looked up, so this module looks them up only when it meets a DSA key or spec.
    PublicKey = rsa.RSAPublicKey | dsa.DSAPublicKey | ec.EllipticCurvePublicKey
    PrivateKey = rsa.RSAPrivateKey | dsa.DSAPrivateKey | ec.EllipticCurvePrivateKey



class Reason:
    """Why an image failed verification: the ``reason`` of :class:`SignatureVerificationError`."""

    MISSING_PROPERTY = "missing_property"
    INVALID_PROPERTY = "invalid_property"
    UNKNOWN_HASH_METHOD = "unknown_hash_method"
    UNKNOWN_KEY_TYPE = "unknown_key_type"
    UNKNOWN_MASK_GEN_ALGORITHM = "unknown_mask_gen_algorithm"
    CERTIFICATE_NOT_FOUND = "certificate_not_found"
    CERTIFICATE_INVALID = "certificate_invalid"
    CERTIFICATE_EXPIRED = "certificate_expired"
    CERTIFICATE_NOT_YET_VALID = "certificate_not_yet_valid"
    CERTIFICATE_UNTRUSTED = "certificate_untrusted"
    CERTIFICATE_KEY_USAGE = "certificate_key_usage"
    CERTIFICATE_REVOKED = "certificate_revoked"
    KEY_TYPE_MISMATCH = "key_type_mismatch"
    TRUNCATED = "truncated"
    SIZE_MISMATCH = "size_mismatch"
    DATA_MODIFIED = "data_modified"
    WRONG_KEY = "wrong_key"
    SIGNATURE_MISMATCH = "signature_mismatch"


class SignatureVerificationError(KeramosError):
    """An image's signature, certificate or data failed verification; the image must not boot.

    ``reason`` is one of the :class:`Reason` constants; the message says what was found.
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.detail = message
        super().__init__(f"{reason}: {message}")

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "reason": self.reason}


@dataclasses.dataclass(frozen=True)
class SignatureSpec:
    """The validated signature properties of one image."""

    signature: bytes
    hash_method: str
    key_type: str
    certificate_uuid: str
    mask_gen_algorithm: str | None = None
    pss_salt_length: int | None = None

    @property
    def hashlib_name(self) -> str:
        """The hashlib name of the hash method (``sha256``...)."""
        return HASH_METHODS[self.hash_method][0]

    def hash_algorithm(self) -> hashes.HashAlgorithm:
        """A cryptography instance of the hash method."""
        return HASH_METHODS[self.hash_method][1]()

    def to_properties(self) -> dict[str, str]:
        """The Glance properties that describe this signature."""
        properties = {
            SIGNATURE: base64.b64encode(self.signature).decode("ascii"),
            HASH_METHOD: self.hash_method,
            KEY_TYPE: self.key_type,
            CERTIFICATE_UUID: self.certificate_uuid,
        }
        if self.mask_gen_algorithm is not None:
            properties[MASK_GEN_ALGORITHM] = self.mask_gen_algorithm
        if self.pss_salt_length is not None:
            properties[PSS_SALT_LENGTH] = str(self.pss_salt_length)
        return properties


def parse_signature_properties(properties: Mapping[str, Any]) -> SignatureSpec:
    """Validate an image's signature properties and return them parsed.

    Raises :class:`SignatureVerificationError` naming the first missing or bad property.
    """
    missing = [name for name in REQUIRED_PROPERTIES if not properties.get(name)]
    if missing:
        raise SignatureVerificationError(
            Reason.MISSING_PROPERTY,
            f"image lacks signature propert{'y' if len(missing) == 1 else 'ies'} "
            f"{', '.join(missing)}",
        )
    hash_method = str(properties[HASH_METHOD])
    if hash_method not in HASH_METHODS:
        raise SignatureVerificationError(
            Reason.UNKNOWN_HASH_METHOD,
            f"{HASH_METHOD} {hash_method!r} is not one of {', '.join(HASH_METHODS)}",
        )
    key_type = str(properties[KEY_TYPE])
    if key_type not in KEY_TYPES:
        raise SignatureVerificationError(
            Reason.UNKNOWN_KEY_TYPE, f"{KEY_TYPE} {key_type!r} is not one of {', '.join(KEY_TYPES)}"
        )
    try:
        signature = base64.b64decode(str(properties[SIGNATURE]), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureVerificationError(
            Reason.INVALID_PROPERTY, f"{SIGNATURE} is not valid base64"
        ) from None
    mask_gen_algorithm = None
    salt_length = None
    if key_type == RSA_PSS:
        mask_gen_algorithm = str(properties.get(MASK_GEN_ALGORITHM) or "MGF1")
        if mask_gen_algorithm not in MASK_GEN_ALGORITHMS:
            raise SignatureVerificationError(
                Reason.UNKNOWN_MASK_GEN_ALGORITHM,
                f"{MASK_GEN_ALGORITHM} {mask_gen_algorithm!r} is not one of "
                f"{', '.join(MASK_GEN_ALGORITHMS)}",
            )
        raw_salt = properties.get(PSS_SALT_LENGTH)
        if raw_salt not in (None, ""):
            try:
                salt_length = int(str(raw_salt))
            except ValueError:
                salt_length = -1
            if salt_length < 0:
                raise SignatureVerificationError(
                    Reason.INVALID_PROPERTY,
                    f"{PSS_SALT_LENGTH} {raw_salt!r} is not a non-negative integer",
                )
    return SignatureSpec(
        signature=signature,
        hash_method=hash_method,
        key_type=key_type,
        certificate_uuid=str(properties[CERTIFICATE_UUID]),
        mask_gen_algorithm=mask_gen_algorithm,
        pss_salt_length=salt_length,
    )


def check_key_type(spec: SignatureSpec, public_key: Any) -> PublicKey:
    """Return ``public_key`` if it is the kind of key ``spec.key_type`` names, else raise."""
    if spec.key_type == RSA_PSS:
        wanted: type = rsa.RSAPublicKey
    elif spec.key_type == DSA:
        wanted = dsa.DSAPublicKey
    else:
        wanted = ec.EllipticCurvePublicKey
    if not isinstance(public_key, wanted):
        raise SignatureVerificationError(
            Reason.KEY_TYPE_MISMATCH,
            f"{KEY_TYPE} is {spec.key_type} but the certificate holds a "
            f"{type(public_key).__name__.lstrip('_')}",
        )
    if spec.key_type in EC_KEY_TYPES:
        curve = EC_KEY_TYPES[spec.key_type]
        if not isinstance(public_key.curve, curve):
            raise SignatureVerificationError(
                Reason.KEY_TYPE_MISMATCH,
                f"{KEY_TYPE} is {spec.key_type} but the certificate's key is on curve "
                f"{public_key.curve.name}",
            )
    return public_key


def _pss_padding(hash_algorithm: hashes.HashAlgorithm, salt_length: int | None) -> padding.PSS:
    return padding.PSS(
        mgf=padding.MGF1(hash_algorithm),
        salt_length=padding.PSS.AUTO if salt_length is None else salt_length,
    )


def _mgf1(seed: bytes, length: int, hashlib_name: str) -> bytes:
    output = bytearray()
    counter = 0
    while len(output) < length:
        output += hashlib.new(hashlib_name, seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return bytes(output[:length])


def rsa_pss_made_by_key(public_key: rsa.RSAPublicKey, spec: SignatureSpec) -> bool:
    """Whether the RSA-PSS signature was made with this key, whatever data it was made over.

    The PSS encoding recovered with the public key has a fixed structure (a ``0xbc`` trailer,
    zero padding then ``0x01`` in the unmasked data block) that does not depend on the data;
    a signature from another key yields random bytes instead (a false match has odds of about
    one in 65,000). This tells "the data changed" from "another key signed it".
    """
    numbers = public_key.public_numbers()
    mod_bits = numbers.n.bit_length()
    if len(spec.signature) != (mod_bits + 7) // 8:
        return False
    value = int.from_bytes(spec.signature, "big")
    if value >= numbers.n:
        return False
    em_bits = mod_bits - 1
    em_len = (em_bits + 7) // 8
    try:
        encoded = pow(value, numbers.e, numbers.n).to_bytes(em_len, "big")
    except OverflowError:
        return False
    digest_size = hashlib.new(spec.hashlib_name).digest_size
    if em_len < digest_size + 2 or encoded[-1] != 0xBC:
        return False
    masked_block = encoded[: em_len - digest_size - 1]
    seed = encoded[em_len - digest_size - 1 : -1]
    zero_bits = 8 * em_len - em_bits
    if zero_bits and masked_block[0] >> (8 - zero_bits):
        return False
    mask = _mgf1(seed, len(masked_block), spec.hashlib_name)
    block = bytearray(a ^ b for a, b in zip(masked_block, mask, strict=True))
    block[0] &= 0xFF >> zero_bits
    separator = next((index for index, byte in enumerate(block) if byte), None)
    if separator is None or block[separator] != 0x01:
        return False
    return spec.pss_salt_length is None or separator == len(block) - spec.pss_salt_length - 1


def verify_digest(spec: SignatureSpec, public_key: PublicKey, digest: bytes) -> None:
    """Verify the signature over an image's digest; raise on mismatch.

    RSA-PSS tells :attr:`Reason.WRONG_KEY` from :attr:`Reason.DATA_MODIFIED` (the PSS encoding
    proves which key made the signature). An ECDSA or DSA signature proves nothing about its key
    without the data it was made over: for any key there is some data it verifies with. What is
    known is that this data is not what the certificate's key signed, so the reason is
    :attr:`Reason.DATA_MODIFIED` (modified before or after upload; the image store's checksum
    cannot clear data that was modified before it was uploaded), and the message says another
    key cannot be ruled out. ``wrong_key`` is never claimed without proof.
    """
    check_key_type(spec, public_key)
    hash_algorithm = spec.hash_algorithm()
    prehashed = utils.Prehashed(hash_algorithm)
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(
                spec.signature,
                digest,
                _pss_padding(hash_algorithm, spec.pss_salt_length),
                prehashed,
            )
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(spec.signature, digest, ec.ECDSA(prehashed))
        else:
            public_key.verify(spec.signature, digest, prehashed)
    except InvalidSignature:
        if isinstance(public_key, rsa.RSAPublicKey):
            if rsa_pss_made_by_key(public_key, spec):
                raise SignatureVerificationError(
                    Reason.DATA_MODIFIED,
                    "the signature was made with the certificate's key over other data: "
                    "the image data was modified or corrupted",
                ) from None
            raise SignatureVerificationError(
                Reason.WRONG_KEY,
                f"the signature was not made with the key of certificate {spec.certificate_uuid}",
            ) from None
        raise SignatureVerificationError(
            Reason.DATA_MODIFIED,
            f"the image data is not what the key of certificate {spec.certificate_uuid} signed: "
            f"it was modified, before or after upload ({spec.key_type} signatures cannot tell "
            "this from a signature made with another key)",
        ) from None


class StreamingVerifier:
    """Hash an image's data once, chunk by chunk, then verify its signature.

    ``expected_size`` (the size the image store recorded, if any) turns short or long data into
    :attr:`Reason.TRUNCATED` or :attr:`Reason.SIZE_MISMATCH`; data longer than expected is
    refused as soon as it arrives, so a runaway download stops early.
    """

    def __init__(
        self, spec: SignatureSpec, public_key: PublicKey, *, expected_size: int | None = None
    ) -> None:
        self.spec = spec
        self.public_key = check_key_type(spec, public_key)
        self.expected_size = expected_size
        self.bytes_seen = 0
        self._hash = hashlib.new(spec.hashlib_name)

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        """Feed the next chunk of data."""
        self.bytes_seen += len(chunk)
        if self.expected_size is not None and self.bytes_seen > self.expected_size:
            raise SignatureVerificationError(
                Reason.SIZE_MISMATCH,
                f"image data is longer than the {self.expected_size} bytes the store recorded",
            )
        self._hash.update(chunk)

    def digest(self) -> bytes:
        """The digest of the data fed so far."""
        return self._hash.digest()

    def verify(self) -> bytes:
        """Check the size, then the signature over the digest; return the digest."""
        if self.expected_size is not None and self.bytes_seen < self.expected_size:
            raise SignatureVerificationError(
                Reason.TRUNCATED,
                f"image data ended after {self.bytes_seen} of {self.expected_size} bytes",
            )
        digest = self.digest()
        verify_digest(self.spec, self.public_key, digest)
        return digest

    def verify_stream(self, chunks: Iterable[bytes]) -> bytes:
        """Feed every chunk, then :meth:`verify`; return the digest."""
        for chunk in chunks:
            self.update(chunk)
        return self.verify()

    def copy_stream(self, chunks: Iterable[bytes], target: BinaryIO, *, depth: int = 8) -> None:
        """Feed every chunk and write it to ``target``, hashing and writing at the same time.

        A writer thread drains a queue of at most ``depth`` chunks, so memory stays bounded
        while the hash (which releases the GIL) and the writes use two cores. Call
        :meth:`verify` afterwards. An error on either side stops both and is raised here.
        """
        pending: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        failures: list[BaseException] = []

        def write() -> None:
            while (chunk := pending.get()) is not None:
                if not failures:
                    try:
                        target.write(chunk)
                    except BaseException as error:  # re-raised in the calling thread
                        failures.append(error)

        writer = threading.Thread(target=write, name="image-writer", daemon=True)
        writer.start()
        try:
            for chunk in chunks:
                if failures:
                    break
                self.update(chunk)
                pending.put(chunk)
        finally:
            pending.put(None)
            writer.join()
        if failures:
            raise failures[0]


def sign_digest(
    private_key: PrivateKey, hash_method: str, digest: bytes, *, salt_length: int | None = None
) -> bytes:
    """Sign an image digest the way Glance expects (RSA keys sign with RSA-PSS, MGF1)."""
    hash_algorithm = HASH_METHODS[hash_method][1]()
    prehashed = utils.Prehashed(hash_algorithm)
    if isinstance(private_key, rsa.RSAPrivateKey):
        salt = padding.PSS.MAX_LENGTH if salt_length is None else salt_length
        return private_key.sign(
            digest, padding.PSS(mgf=padding.MGF1(hash_algorithm), salt_length=salt), prehashed
        )
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(digest, ec.ECDSA(prehashed))
    if isinstance(private_key, dsa.DSAPrivateKey):
        return private_key.sign(digest, prehashed)
    raise SignatureVerificationError(
        Reason.UNKNOWN_KEY_TYPE, f"cannot sign with a {type(private_key).__name__} key"
    )


def key_type_of(private_key: PrivateKey) -> str:
    """The Glance key type matching a private key (``RSA-PSS``, ``DSA``, ``ECC_...``)."""
    if isinstance(private_key, rsa.RSAPrivateKey):
        return RSA_PSS
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        for key_type, curve in EC_KEY_TYPES.items():
            if isinstance(private_key.curve, curve):
                return key_type
    elif isinstance(private_key, dsa.DSAPrivateKey):
        return DSA
    raise SignatureVerificationError(
        Reason.UNKNOWN_KEY_TYPE,
        f"no Glance key type for a {type(private_key).__name__} key "
        f"(supported: {', '.join(KEY_TYPES)})",
    )


def sign_chunks(
    chunks: Iterable[bytes],
    private_key: PrivateKey,
    *,
    certificate_uuid: str,
    hash_method: str = "SHA-256",
    salt_length: int | None = None,
) -> SignatureSpec:
    """Hash the data once and sign it; return the signature as Glance properties describe it."""
    if hash_method not in HASH_METHODS:
        raise SignatureVerificationError(
            Reason.UNKNOWN_HASH_METHOD,
            f"hash method {hash_method!r} is not one of {', '.join(HASH_METHODS)}",
        )
    key_type = key_type_of(private_key)
    digest_hash = hashlib.new(HASH_METHODS[hash_method][0])
    for chunk in chunks:
        digest_hash.update(chunk)
    signature = sign_digest(private_key, hash_method, digest_hash.digest(), salt_length=salt_length)
    return SignatureSpec(
        signature=signature,
        hash_method=hash_method,
        key_type=key_type,
        certificate_uuid=certificate_uuid,
        mask_gen_algorithm="MGF1" if key_type == RSA_PSS else None,
        pss_salt_length=salt_length if key_type == RSA_PSS else None,
    )
