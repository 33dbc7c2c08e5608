"""Tasks of the ``verify_image`` flow. Each receives its drivers and undoes what it made.

The image goes ``verifying`` -> ``active``; any failure reverts the flow, which marks the image
``killed`` with the reason (the first task's revert) and removes the data downloaded so far
(the cache removes a staging file whose data did not verify).

The same tasks verify an amphora's image inside ``create_amphora`` and ``failover_amphora``.
There a task after the verification may fail too: the image is then not at fault and stays
``active`` and cached (the cache holds verified images for every boot, not resources of one
amphora), so the reverts below act only when a verification task (:data:`VERIFICATION_TASKS`)
failed. There too the image may be unsigned and allowed to boot unverified: every verification
task takes ``image_signed`` (``check_amphora_image`` provides it; True by default, so that
``verify_image`` always verifies) and does nothing when it is False. The decision is data saved
with the first task's result, not a branch taskflow skips atom by atom: it survives a crash at
any point.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, BinaryIO

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from oslo_log import log as logging
from taskflow import task
from taskflow.types import failure

from keramos.framework.contracts import ImageStore, KeyManager, StateStore
from keramos.framework.errors import NotFound
from keramos.framework.images import signature
from keramos.framework.images.cache import (
    CachedImage,
    CacheEntryTooLarge,
    VerifiedImageCache,
    checksum_of,
)
from keramos.framework.images.certificate_validation import (
    CertificateValidator,
    describe_certificate,
    load_certificates,
)
from keramos.framework.images.signature import Reason, SignatureVerificationError
from keramos.framework.records import ImageRecord

LOG = logging.getLogger(__name__)

VERIFYING = "verifying"
ACTIVE = "active"
KILLED = "killed"

#: The names of the verification tasks: a failure among them is the image's.
VERIFICATION_TASKS = frozenset(
    {
        "mark_image_verifying",
        "get_image_signature",
        "validate_signing_certificate",
        "download_and_verify_image",
        "mark_image_active",
    }
)


def verification_failed(flow_failures: Mapping[str, failure.Failure] | None) -> bool:
    """Whether one of :data:`VERIFICATION_TASKS` failed (rather than a task after them)."""
    return any(name in VERIFICATION_TASKS for name in (flow_failures or {}))


def _first_failure(flow_failures: Mapping[str, failure.Failure] | None) -> str:
    for fail in (flow_failures or {}).values():
        return fail.exception_str
    return "verification was reverted"


class MarkImageVerifying(task.Task):
    """Record the image as ``verifying``; on revert mark it ``killed`` with the reason."""

    def __init__(self, state_store: StateStore) -> None:
        super().__init__(name="mark_image_verifying")
        self.state_store = state_store

    def execute(self, image_id: str, image_signed: bool = True) -> None:
        if not image_signed:
            return
        if self.state_store.get(ImageRecord, image_id) is None:
            self.state_store.save(ImageRecord(image_id=image_id, status=VERIFYING))
        else:
            self.state_store.update(ImageRecord, image_id, status=VERIFYING, message=None)

    def revert(self, image_id: str, result: Any, flow_failures=None, **kwargs: Any) -> None:
        if isinstance(result, failure.Failure) or not verification_failed(flow_failures):
            return
        reason = _first_failure(flow_failures)
        LOG.error("image %s failed verification and will not boot: %s", image_id, reason)
        self.state_store.update(ImageRecord, image_id, status=KILLED, message=reason)


class GetImageSignature(task.Task):
    """Read the image's properties and validate its signature properties."""

    default_provides = ("image_properties", "image_signature")

    def __init__(self, image_store: ImageStore) -> None:
        super().__init__(name="get_image_signature")
        self.image_store = image_store

    def execute(
        self, image_id: str, image_signed: bool = True
    ) -> tuple[dict[str, str] | None, dict[str, str] | None]:
        if not image_signed:
            return None, None
        properties = dict(self.image_store.properties(image_id))
        spec = signature.parse_signature_properties(properties)
        return properties, spec.to_properties()


class ValidateSigningCertificate(task.Task):
    """Fetch the signing certificate from the key manager by uuid and validate it.

    Provides ``{"certificate_uuid", "pem", "subject", "description"}``; the PEM holds the
    signing certificate followed by the intermediates stored with it. ``validator`` is a
    validator, or a callable returning the one to use now (read when the task runs, so that a
    flow built once sees the trusted CA or CRL file the operator replaced).
    """

    def __init__(
        self,
        key_manager: KeyManager,
        validator: CertificateValidator | Callable[[], CertificateValidator],
    ) -> None:
        super().__init__(name="validate_signing_certificate", provides="signing_certificate")
        self.key_manager = key_manager
        self._validator = validator

    @property
    def validator(self) -> CertificateValidator:
        """The validator to use for this run."""
        if isinstance(self._validator, CertificateValidator):
            return self._validator
        return self._validator()

    def execute(
        self, image_signature: dict[str, str], image_signed: bool = True
    ) -> dict[str, str] | None:
        if not image_signed:
            return None
        spec = signature.parse_signature_properties(image_signature)
        validator = self.validator
        try:
            stored = self.key_manager.get_certificate(spec.certificate_uuid)
        except NotFound as error:
            raise SignatureVerificationError(
                Reason.CERTIFICATE_NOT_FOUND,
                f"no signing certificate {spec.certificate_uuid} in the key manager: {error}",
            ) from None
        certificate, *intermediates = load_certificates(stored)
        signature.check_key_type(spec, certificate.public_key())
        chain = validator.validate(certificate, intermediates)
        pem = b"".join(_pem(cert) for cert in [certificate, *intermediates]).decode("ascii")
        return {
            "certificate_uuid": spec.certificate_uuid,
            "pem": pem,
            "subject": certificate.subject.rfc4514_string(),
            "description": describe_certificate(certificate),
            "chain": " <- ".join(cert.subject.rfc4514_string() for cert in chain),
        }


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _diagnose_mismatch(
    error: SignatureVerificationError, data: Iterable[bytes], properties: Mapping[str, str]
) -> SignatureVerificationError:
    """Tell modified data from another key using the checksum the image store recorded.

    Only called once a signature failed, so the success path hashes the data once.
    """
    if properties.get("os_hash_algo") and properties.get("os_hash_value"):
        algorithm, expected = properties["os_hash_algo"], properties["os_hash_value"]
    elif properties.get("checksum"):
        algorithm, expected = "md5", properties["checksum"]
    else:
        return error
    try:
        digest = hashlib.new(algorithm)
    except ValueError:
        return error
    for chunk in data:
        digest.update(chunk)
    if digest.hexdigest() != expected.lower():
        return SignatureVerificationError(
            Reason.DATA_MODIFIED,
            f"the image data does not match the {algorithm} checksum the image store recorded: "
            "it was modified or corrupted",
        )
    return SignatureVerificationError(
        Reason.WRONG_KEY,
        "the image data matches its recorded checksum but the signature does not verify: it "
        "was not made with the key of the signing certificate",
    )


class DownloadAndVerifyImage(task.Task):
    """Stream the image once, in chunks, through the hash into the cache; verify; keep it.

    A cache hit is re-verified cheaply: the stored digest against the signature. On failure the
    partial data is removed; on revert an entry this run added is evicted. ``cache`` is the
    cache, or a callable returning it (made on first use: a flow that boots only unsigned images
    never makes one).
    """

    def __init__(
        self,
        image_store: ImageStore,
        cache: VerifiedImageCache | Callable[[], VerifiedImageCache],
        chunk_size: int,
    ) -> None:
        super().__init__(name="download_and_verify_image", provides="verified_image")
        self.image_store = image_store
        self._cache = cache
        self.chunk_size = chunk_size

    @property
    def cache(self) -> VerifiedImageCache:
        """The verified image cache."""
        if isinstance(self._cache, VerifiedImageCache):
            return self._cache
        return self._cache()

    def execute(
        self,
        image_id: str,
        image_properties: dict[str, str],
        image_signature: dict[str, str],
        signing_certificate: dict[str, str],
        image_signed: bool = True,
    ) -> dict[str, Any] | None:
        if not image_signed:
            return None
        spec = signature.parse_signature_properties(image_signature)
        public_key = load_certificates(signing_certificate["pem"].encode())[0].public_key()
        size = image_properties.get("size")
        expected_size = int(size) if size and size.isdigit() else None
        checksum = checksum_of(image_properties)
        if expected_size is not None and expected_size > self.cache.max_size:
            return self._verify_uncached(
                image_id, spec, public_key, expected_size, image_properties
            )
        downloaded: list[bool] = []

        def produce(target: BinaryIO) -> dict[str, str]:
            downloaded.append(True)
            digest = self._verify(
                image_id, spec, public_key, expected_size, image_properties, target
            )
            return {
                "digest": digest.hex(),
                "hash_method": spec.hash_method,
                "hashlib": spec.hashlib_name,
                "signature": base64.b64encode(spec.signature).decode("ascii"),
            }

        try:
            entry = self.cache.fetch(image_id, checksum, produce)
        except CacheEntryTooLarge:
            return self._verify_uncached(
                image_id, spec, public_key, expected_size, image_properties
            )
        if entry is not None and not downloaded:
            entry = self._recheck_hit(entry, spec, public_key, checksum, produce)
        return {
            "path": entry.path if entry else None,
            "size": entry.size if entry else expected_size,
            "digest": entry.digest if entry else None,
            "checksum": checksum,
            "cached": entry is not None,
            "downloaded": bool(downloaded),
        }

    def _verify_uncached(
        self,
        image_id: str,
        spec: signature.SignatureSpec,
        public_key: signature.PublicKey,
        expected_size: int | None,
        properties: Mapping[str, str],
    ) -> dict[str, Any]:
        LOG.warning(
            "image %s is larger than the image cache (%d bytes): verifying it without keeping "
            "a copy",
            image_id,
            self.cache.max_size,
        )
        self._verify(image_id, spec, public_key, expected_size, properties, None)
        return {
            "path": None,
            "size": expected_size,
            "digest": None,
            "checksum": checksum_of(properties),
            "cached": False,
            "downloaded": True,
        }

    def _verify(
        self,
        image_id: str,
        spec: signature.SignatureSpec,
        public_key: signature.PublicKey,
        expected_size: int | None,
        properties: Mapping[str, str],
        target: BinaryIO | None,
    ) -> bytes:
        """Stream the image through the hash (into ``target`` if given); verify; the digest."""
        verifier = signature.StreamingVerifier(spec, public_key, expected_size=expected_size)
        chunks = self.image_store.chunks(image_id, self.chunk_size)
        try:
            if target is None:
                return verifier.verify_stream(chunks)
            verifier.copy_stream(chunks, target)
            return verifier.verify()
        except SignatureVerificationError as error:
            if error.reason != Reason.SIGNATURE_MISMATCH:
                raise
            if target is None:
                data = self.image_store.chunks(image_id, self.chunk_size)
            else:
                target.seek(0)
                data = iter(lambda: target.read(1 << 20), b"")
            raise _diagnose_mismatch(error, data, properties) from None

    def _recheck_hit(
        self, entry: CachedImage, spec, public_key, checksum: str, produce
    ) -> CachedImage | None:
        if entry.hash_method == spec.hash_method:
            try:
                signature.verify_digest(spec, public_key, bytes.fromhex(entry.digest))
                return entry
            except SignatureVerificationError:
                LOG.warning("cached image %s no longer matches its signature", entry.image_id)
        self.cache.evict(entry.image_id, checksum)
        return self.cache.fetch(entry.image_id, checksum, produce)

    def revert(self, image_id: str, result: Any, flow_failures=None, **kwargs: Any) -> None:
        if not verification_failed(flow_failures):
            return
        if isinstance(result, dict) and result.get("downloaded") and result.get("cached"):
            self.cache.evict(image_id, result["checksum"])


class MarkImageActive(task.Task):
    """Record the verified image as ``active`` and log who signed it."""

    def __init__(self, state_store: StateStore) -> None:
        super().__init__(name="mark_image_active", provides="image")
        self.state_store = state_store

    def execute(
        self,
        image_id: str,
        image_properties: dict[str, str],
        signing_certificate: dict[str, str],
        verified_image: dict[str, Any],
        image_signed: bool = True,
    ) -> dict[str, Any] | None:
        if not image_signed:
            return None
        LOG.info(
            "image %s signature verified: signed by %s (certificate %s)",
            image_id,
            signing_certificate["subject"],
            signing_certificate["certificate_uuid"],
        )
        LOG.debug(
            "image %s signing certificate %s, chain %s",
            image_id,
            signing_certificate["description"],
            signing_certificate["chain"],
        )
        self.state_store.update(
            ImageRecord,
            image_id,
            status=ACTIVE,
            size=verified_image["size"],
            checksum=image_properties.get("checksum") or verified_image["checksum"],
            message=f"signature verified; signed by {signing_certificate['subject']}",
            signer=signing_certificate["subject"],
            certificate_uuid=signing_certificate["certificate_uuid"],
        )
        return {
            "image_id": image_id,
            "status": ACTIVE,
            "size": verified_image["size"],
            "signer": signing_certificate["subject"],
            "certificate_uuid": signing_certificate["certificate_uuid"],
            "path": verified_image["path"],
            "cache_hit": not verified_image["downloaded"],
        }
