"""Validate an image-signing certificate before its key is trusted.

Glance skips this and Nova does it only in part. :class:`CertificateValidator` checks, in this
order: validity dates; a chain to one of the operator's trusted CA certificates, through
intermediates (RSA PKCS#1 v1.5, RSA-PSS and ECDSA signed; basic constraints and path lengths
on every CA, done by ``cryptography.x509.verification`` with its WebPKI CA policy); that key
usage, when present, allows digital signatures; and, when CRLs are configured, that no
certificate of the chain is revoked. A certificate the operator trusts directly (listed in the
trusted CA file) needs no chain.

Options live in ``[image_verification]``; :func:`register_opts` registers them.
:class:`ConfiguredValidator` hands out the validator of those options, read again only when one
of their files changed, so that flows built once still see a CA or CRL file the operator replaced.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import threading
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification
from oslo_config import cfg
from oslo_log import log as logging

from keramos.framework.errors import ConfigError
from keramos.framework.images.signature import Reason, SignatureVerificationError

LOG = logging.getLogger(__name__)

GROUP = "image_verification"
_CRL_PEM = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)

image_verification_opts = [
    cfg.StrOpt(
        "trusted_ca_file",
        help="PEM file of the CA certificates an image-signing certificate must chain to. "
        "A signing certificate listed here is trusted directly. Required to verify images.",
    ),
    cfg.StrOpt(
        "intermediate_ca_file",
        help="Optional PEM file of intermediate CA certificates used to build chains, in "
        "addition to those stored with the signing certificate.",
    ),
    cfg.StrOpt(
        "crl_file",
        help="Optional PEM file of certificate revocation lists; when set, a signing or "
        "intermediate certificate listed as revoked by its issuer fails verification.",
    ),
    cfg.IntOpt(
        "max_chain_depth",
        default=8,
        min=1,
        max=32,
        help="Most intermediate certificates a chain to a trusted CA may contain.",
    ),
    cfg.IntOpt(
        "chunk_size",
        default=1 << 20,
        min=4096,
        help="Bytes read from the image store at a time while hashing an image.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register the ``[image_verification]`` options on ``conf`` (idempotent)."""
    conf.register_opts(image_verification_opts, group=GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """The options of this module, for the sample-config generator."""
    return [(GROUP, list(image_verification_opts))]


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Parse a PEM bundle (one or more certificates) or a single DER certificate.

    Raises :class:`SignatureVerificationError` (:attr:`Reason.CERTIFICATE_INVALID`).
    """
    try:
        if b"-----BEGIN" in data:
            certificates = x509.load_pem_x509_certificates(data)
        else:
            certificates = [x509.load_der_x509_certificate(data)]
    except ValueError as error:
        raise SignatureVerificationError(
            Reason.CERTIFICATE_INVALID, f"cannot parse certificate: {error}"
        ) from None
    return certificates


def load_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    """Parse the PEM CRLs in ``data`` (a single DER CRL is accepted too)."""
    if b"-----BEGIN" not in data:
        return [x509.load_der_x509_crl(data)]
    return [x509.load_pem_x509_crl(block) for block in _CRL_PEM.findall(data)]


def describe_certificate(certificate: x509.Certificate) -> str:
    """One line naming a certificate for logs and messages: subject, issuer, serial, dates."""
    fingerprint = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    return (
        f"subject={certificate.subject.rfc4514_string()!r} "
        f"issuer={certificate.issuer.rfc4514_string()!r} serial={certificate.serial_number:x} "
        f"not_before={certificate.not_valid_before_utc.isoformat()} "
        f"not_after={certificate.not_valid_after_utc.isoformat()} sha256={fingerprint[:16]}"
    )


def _name(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string() or "(empty subject)"


def _check_dates(certificate: x509.Certificate, now: dt.datetime, role: str) -> None:
    if now < certificate.not_valid_before_utc:
        raise SignatureVerificationError(
            Reason.CERTIFICATE_NOT_YET_VALID,
            f"{role} certificate {_name(certificate)!r} is not valid before "
            f"{certificate.not_valid_before_utc.isoformat()}",
        )
    if now > certificate.not_valid_after_utc:
        raise SignatureVerificationError(
            Reason.CERTIFICATE_EXPIRED,
            f"{role} certificate {_name(certificate)!r} expired on "
            f"{certificate.not_valid_after_utc.isoformat()}",
        )


def _check_key_usage(certificate: x509.Certificate) -> None:
    try:
        key_usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not key_usage.digital_signature:
        raise SignatureVerificationError(
            Reason.CERTIFICATE_KEY_USAGE,
            f"signing certificate {_name(certificate)!r} has a key usage that does not allow "
            "digital signatures",
        )


class CertificateValidator:
    """Checks signing certificates against the operator's trust anchors (and CRLs)."""

    def __init__(
        self,
        trusted_cas: Sequence[x509.Certificate],
        *,
        intermediates: Sequence[x509.Certificate] = (),
        crls: Sequence[x509.CertificateRevocationList] = (),
        max_chain_depth: int = 8,
    ) -> None:
        if not trusted_cas:
            raise ConfigError("image verification needs at least one trusted CA certificate")
        self.trusted_cas = list(trusted_cas)
        self.intermediates = list(intermediates)
        self.crls = list(crls)
        self.max_chain_depth = max_chain_depth
        self._store = verification.Store(self.trusted_cas)
        self._trusted_der = {ca.public_bytes(serialization.Encoding.DER) for ca in self.trusted_cas}

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts) -> CertificateValidator:
        """Build a validator from ``[image_verification]``; ConfigError if it cannot work."""
        register_opts(conf)
        group = conf[GROUP]
        if not group.trusted_ca_file:
            raise ConfigError(
                f"[{GROUP}] trusted_ca_file is not set: images cannot be verified without the "
                "CA certificates their signers chain to"
            )
        trusted = cls._read_certificates(group.trusted_ca_file, "trusted_ca_file")
        intermediates = (
            cls._read_certificates(group.intermediate_ca_file, "intermediate_ca_file")
            if group.intermediate_ca_file
            else []
        )
        crls: list[x509.CertificateRevocationList] = []
        if group.crl_file:
            try:
                with open(group.crl_file, "rb") as crl_file:
                    crls = load_crls(crl_file.read())
            except (OSError, ValueError) as error:
                raise ConfigError(f"[{GROUP}] crl_file {group.crl_file}: {error}") from error
        return cls(
            trusted, intermediates=intermediates, crls=crls, max_chain_depth=group.max_chain_depth
        )

    @staticmethod
    def _read_certificates(path: str, option: str) -> list[x509.Certificate]:
        try:
            with open(path, "rb") as pem_file:
                certificates = load_certificates(pem_file.read())
        except OSError as error:
            raise ConfigError(f"[{GROUP}] {option} {path}: {error.strerror}") from error
        except SignatureVerificationError as error:
            raise ConfigError(f"[{GROUP}] {option} {path}: {error.detail}") from error
        if not certificates:
            raise ConfigError(f"[{GROUP}] {option} {path} holds no certificate")
        return certificates

    def validate(
        self,
        certificate: x509.Certificate,
        intermediates: Sequence[x509.Certificate] = (),
        *,
        now: dt.datetime | None = None,
    ) -> list[x509.Certificate]:
        """Validate a signing certificate; return its chain, signing certificate first.

        Raises :class:`SignatureVerificationError` with reason ``certificate_not_yet_valid``,
        ``certificate_expired``, ``certificate_untrusted``, ``certificate_key_usage`` or
        ``certificate_revoked``.
        """
        now = now or dt.datetime.now(dt.timezone.utc)
        _check_dates(certificate, now, "signing")
        candidates = [*intermediates, *self.intermediates]
        if certificate.public_bytes(serialization.Encoding.DER) in self._trusted_der:
            chain = [certificate]
        else:
            chain = self._build_chain(certificate, candidates, now)
        _check_key_usage(certificate)
        self._check_revocation(chain, now)
        return chain

    def _build_chain(
        self, certificate: x509.Certificate, candidates: list[x509.Certificate], now: dt.datetime
    ) -> list[x509.Certificate]:
        verifier = (
            verification.PolicyBuilder()
            .store(self._store)
            .time(now.replace(microsecond=0))
            .max_chain_depth(self.max_chain_depth)
            .extension_policies(
                ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=verification.ExtensionPolicy.permit_all(),
            )
            .build_client_verifier()
        )
        try:
            return list(verifier.verify(certificate, candidates).chain)
        except verification.VerificationError as error:
            self._explain_expired_issuer(certificate, candidates, now)
            raise SignatureVerificationError(
                Reason.CERTIFICATE_UNTRUSTED,
                f"signing certificate {_name(certificate)!r} does not chain to a trusted CA: "
                f"{error}",
            ) from None

    def _explain_expired_issuer(
        self, certificate: x509.Certificate, candidates: list[x509.Certificate], now: dt.datetime
    ) -> None:
        """Turn a chain that fails only because an issuer expired into a clear reason."""
        pool = [*candidates, *self.trusted_cas]
        current = certificate
        for _ in range(self.max_chain_depth + 1):
            issuers = [cert for cert in pool if cert.subject == current.issuer]
            if not issuers or any(
                cert.not_valid_before_utc <= now <= cert.not_valid_after_utc for cert in issuers
            ):
                return
            if current.issuer == current.subject:
                return
            _check_dates(issuers[0], now, "issuing CA")
            current = issuers[0]

    def _check_revocation(self, chain: list[x509.Certificate], now: dt.datetime) -> None:
        if not self.crls:
            return
        for certificate, issuer in zip(chain, chain[1:], strict=False):
            for crl in self.crls:
                if crl.issuer != issuer.subject:
                    continue
                if not crl.is_signature_valid(issuer.public_key()):
                    LOG.warning(
                        "ignoring a CRL for %s whose signature does not verify",
                        issuer.subject.rfc4514_string(),
                    )
                    continue
                if crl.next_update_utc is not None and crl.next_update_utc < now:
                    LOG.warning(
                        "the CRL of %s is past its next update (%s); using it anyway",
                        issuer.subject.rfc4514_string(),
                        crl.next_update_utc.isoformat(),
                    )
                revoked = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
                if revoked is not None:
                    raise SignatureVerificationError(
                        Reason.CERTIFICATE_REVOKED,
                        f"certificate {_name(certificate)!r} (serial "
                        f"{certificate.serial_number:x}) was revoked by "
                        f"{issuer.subject.rfc4514_string()!r} on "
                        f"{revoked.revocation_date_utc.isoformat()}",
                    )


class ConfiguredValidator:
    """The :class:`CertificateValidator` of ``[image_verification]``, read when first asked for and
    again whenever the options or one of their files (trusted CAs, intermediates, CRLs) changed.

    A call costs a ``stat`` of each configured file while nothing changed; a changed file (other
    modification time, change time, size or inode: replaced or rewritten) is parsed again before
    the next validation. Raises :class:`ConfigError` like :meth:`CertificateValidator.from_conf`.
    """

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        register_opts(conf)
        self.conf = conf
        self._lock = threading.Lock()
        self._stamp: tuple[object, ...] | None = None
        self._validator: CertificateValidator | None = None

    def _current_stamp(self) -> tuple[object, ...]:
        group = self.conf[GROUP]
        stamp: list[object] = [group.max_chain_depth]
        for path in (group.trusted_ca_file, group.intermediate_ca_file, group.crl_file):
            try:
                status = os.stat(path) if path else None
            except OSError:
                status = None
            stamp.append(
                (path, None)
                if status is None
                else (path, status.st_mtime_ns, status.st_ctime_ns, status.st_size, status.st_ino)
            )
        return tuple(stamp)

    def __call__(self) -> CertificateValidator:
        """The validator for the configuration and files as they are now."""
        stamp = self._current_stamp()
        with self._lock:
            if self._validator is None or stamp != self._stamp:
                self._validator = CertificateValidator.from_conf(self.conf)
                self._stamp = stamp
            return self._validator
