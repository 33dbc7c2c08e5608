"""The CA core: create and load the dual CA, issue leaf certificates, sign CSRs, build CRLs.

Server certificates (amphora agents, ``serverAuth``) and client certificates (the controller,
``clientAuth``) come from two distinct CAs, so that the certificate of one compromised amphora
controls nothing else. CA keys are kept encrypted with a passphrase in 0600 files.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import ipaddress
import os
import re
import secrets
from collections.abc import Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keramos.framework.contracts import CertKind, IssuedCertificate
from keramos.framework.errors import ConfigError, DriverError
from keramos.framework.files import PRIVATE_MODE, PUBLIC_MODE, write_all_atomic
from keramos.framework.pki import errors
from keramos.framework.pki.keys import (
    DEFAULT_KEY_TYPE,
    PrivateKey,
    generate_private_key,
    hash_for,
    key_matches,
    load_certificate,
    load_private_key,
    private_key_pem,
)
from keramos.framework.records import utcnow
from keramos.framework.schema import IDENTIFIER_PATTERN

#: Leaf certificates start this long before they are issued, for clocks slightly behind.
CLOCK_SKEW = dt.timedelta(minutes=5)
#: X.509's upper bound on a common name (RFC 5280, ub-common-name).
MAX_COMMON_NAME = 64
_MIN_RSA_BITS = 2048
_ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


def ca_certificate_path(directory: str, kind: str) -> str:
    """Where the ``kind`` CA certificate lives: ``server_ca.pem`` or ``client_ca.pem``."""
    return os.path.join(directory, f"{_checked_kind(kind)}_ca.pem")


def ca_key_path(directory: str, kind: str) -> str:
    """Where the ``kind`` CA's encrypted key lives: ``server_ca_key.pem``, ``client_ca_key.pem``."""
    return os.path.join(directory, f"{_checked_kind(kind)}_ca_key.pem")


def crl_path(directory: str, kind: str) -> str:
    """Where the ``kind`` CA's CRL is published: ``server_ca_crl.pem`` or ``client_ca_crl.pem``."""
    return os.path.join(directory, f"{_checked_kind(kind)}_ca_crl.pem")


#: The CAs a directory may hold: the dual CA and the proxy CA.
_CA_KINDS = (*CertKind.ALL, CertKind.PROXY)
#: What a proxy CA's leaf certificate is for: a proxy (``serverAuth``) or a controller
#: talking to proxies (``clientAuth``).
PROXY_ROLES = ("server", "client")


def _checked_kind(kind: str) -> str:
    if kind not in _CA_KINDS:
        raise DriverError(f"certificate kind must be one of {', '.join(_CA_KINDS)}, not {kind!r}")
    return kind


def check_common_name(common_name: str) -> str:
    """Return ``common_name`` if it is a Keramos identifier that fits a certificate's CN."""
    if (
        not isinstance(common_name, str)
        or not re.fullmatch(IDENTIFIER_PATTERN, common_name)
        or len(common_name) > MAX_COMMON_NAME
    ):
        raise DriverError(
            f"common name {common_name!r} is not an identifier: letters, digits, '.', '_', '-', "
            f"starting with a letter or digit, at most {MAX_COMMON_NAME} characters (the X.509 "
            "limit of a common name)"
        )
    return common_name


def _ip_addresses(values: Sequence[str]) -> list[x509.IPAddress]:
    names = []
    for value in values:
        try:
            if not isinstance(value, str):
                raise ValueError(value)
            names.append(x509.IPAddress(ipaddress.ip_address(value)))
        except ValueError:
            raise DriverError(f"{value!r} is not an IP address") from None
    return names


def random_serial() -> int:
    """A random positive 128-bit serial number (never zero)."""
    while True:
        serial = secrets.randbits(128)
        if serial:
            return serial


def serial_hex(serial: int) -> str:
    """A serial number as the lower-case hexadecimal string Keramos records."""
    return format(serial, "032x")


@dataclasses.dataclass(frozen=True)
class CertificateAuthority:
    """One loaded CA: its certificate and its decrypted key, ready to sign."""

    kind: str
    certificate: x509.Certificate
    private_key: PrivateKey
    certificate_pem: bytes

    @functools.cached_property
    def not_valid_before(self) -> dt.datetime:
        """Start of the CA certificate's validity (UTC)."""
        return self.certificate.not_valid_before_utc

    @functools.cached_property
    def not_valid_after(self) -> dt.datetime:
        """End of the CA certificate's validity (UTC)."""
        return self.certificate.not_valid_after_utc

    @functools.cached_property
    def authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        """The extension naming this CA in what it signs (certificates and CRLs)."""
        try:
            ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound:
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self.certificate.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)

    @classmethod
    def create(
        cls,
        kind: str,
        *,
        key_type: str = DEFAULT_KEY_TYPE,
        validity: dt.timedelta,
        now: dt.datetime | None = None,
    ) -> CertificateAuthority:
        """A new self-signed CA for ``kind`` certificates (``keyCertSign`` and ``cRLSign``)."""
        now = now or utcnow()
        key = generate_private_key(key_type)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Keramos"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"Keramos {_checked_kind(kind)} CA"),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(random_serial())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hash_for(key))
        )
        return cls(kind, certificate, key, certificate.public_bytes(serialization.Encoding.PEM))

    @classmethod
    def load(
        cls, directory: str, kind: str, passphrase: bytes, *, now: dt.datetime | None = None
    ) -> CertificateAuthority:
        """Load the ``kind`` CA from ``directory``, decrypting its key with ``passphrase``.

        Raises a :class:`~errors.CAUnusable` subclass naming the file and the problem: missing,
        malformed PEM, not a CA, wrong passphrase, key not matching, expired or not yet valid.
        """
        cert_path, key_path = ca_certificate_path(directory, kind), ca_key_path(directory, kind)
        cert_data, key_data = _read_ca_file(cert_path, kind), _read_ca_file(key_path, kind)
        try:
            certificate = load_certificate(cert_data, what=cert_path)
            key = load_private_key(key_data, passphrase, what=key_path)
        except errors.BadPassphrase as error:
            raise errors.CAWrongPassphrase(f"{kind} CA key: {error}") from None
        except errors.MalformedPEM as error:
            raise errors.CAMalformed(f"{kind} CA: {error}") from None
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
            is_ca = constraints.value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise errors.CAUnusable(f"{cert_path} is not a CA certificate (basicConstraints CA:FALSE)")
        if not key_matches(certificate, key):
            raise errors.CAKeyMismatch(f"{key_path} is not the key of the {kind} CA certificate {cert_path}")
        authority = cls(kind, certificate, key, cert_data)
        authority.check_validity(now or utcnow())
        return authority

    def check_validity(self, now: dt.datetime) -> None:
        """Raise :class:`~errors.CAValidityError` unless the CA certificate is valid at ``now``."""
        not_before, not_after = self.not_valid_before, self.not_valid_after
        if now < not_before:
            raise errors.CAValidityError(
                f"{self.kind} CA certificate is not valid yet (valid from {not_before.isoformat()})"
            )
        if now >= not_after:
            raise errors.CAValidityError(f"{self.kind} CA certificate expired on {not_after.isoformat()}")

    def key_pem(self, passphrase: bytes) -> bytes:
        """This CA's key as PEM encrypted with ``passphrase``."""
        return private_key_pem(self.private_key, passphrase)

    def issue(
        self,
        common_name: str,
        *,
        ip_addresses: Sequence[str] = (),
        validity: dt.timedelta,
        key_type: str = DEFAULT_KEY_TYPE,
        now: dt.datetime | None = None,
        server_auth: bool | None = None,
    ) -> IssuedCertificate:
        """Generate a key and a certificate for ``common_name`` (CN and SAN) and the given IPs.

        ``server_auth`` chooses ``serverAuth`` or ``clientAuth``; by default the server CA issues
        the first and the client CA the second (the proxy CA issues both, so it must be told).
        """
        check_common_name(common_name)
        extra_names = _ip_addresses(ip_addresses)
        key = generate_private_key(key_type)
        return self._sign_leaf(
            common_name, key.public_key(), private_key_pem(key), extra_names, validity, now, server_auth
        )

    def sign_csr(
        self,
        csr_pem: bytes,
        *,
        expected_common_name: str,
        validity: dt.timedelta,
        now: dt.datetime | None = None,
    ) -> IssuedCertificate:
        """Sign a CSR for ``expected_common_name`` after checking its signature, key and names.

        The certificate carries ``expected_common_name`` as CN and sole SAN; nothing else from the
        CSR but its public key is copied.
        """
        check_common_name(expected_common_name)
        csr = _load_csr(csr_pem)
        _check_csr_identity(csr, expected_common_name)
        return self._sign_leaf(expected_common_name, csr.public_key(), None, [], validity, now)

    def crl(
        self,
        revoked: Mapping[str, dt.datetime],
        *,
        next_update: dt.timedelta,
        now: dt.datetime | None = None,
    ) -> bytes:
        """A PEM CRL of this CA listing the ``revoked`` serials (hex) and their revocation times."""
        now = now or utcnow()
        self.check_validity(now)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now)
            .next_update(now + next_update)
            .add_extension(self.authority_key_identifier, critical=False)
            .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
        )
        for serial, revoked_at in sorted(revoked.items()):
            try:
                number = int(serial, 16)
            except ValueError:
                raise DriverError(f"serial {serial!r} is not hexadecimal") from None
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(number).revocation_date(revoked_at).build()
            )
        crl = builder.sign(self.private_key, hash_for(self.private_key))
        return crl.public_bytes(serialization.Encoding.PEM)

    def _sign_leaf(
        self,
        common_name: str,
        public_key,
        key_pem: bytes | None,
        extra_names: list[x509.GeneralName],
        validity: dt.timedelta,
        now: dt.datetime | None,
        server_auth: bool | None = None,
    ) -> IssuedCertificate:
        now = now or utcnow()
        self.check_validity(now)
        if validity <= dt.timedelta(0):
            raise DriverError(f"certificate validity must be positive, not {validity}")
        not_before = max(now - CLOCK_SKEW, self.not_valid_before)
        # Certificates carry whole seconds: what is recorded must be what is signed.
        not_after = min(now + validity, self.not_valid_after).replace(microsecond=0)
        server = self.kind == CertKind.SERVER if server_auth is None else server_auth
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(random_serial())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(common_name), *extra_names]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(self.authority_key_identifier, critical=False)
        )
        certificate = builder.sign(self.private_key, hash_for(self.private_key))
        return IssuedCertificate(
            certificate_pem=certificate.public_bytes(serialization.Encoding.PEM),
            private_key_pem=key_pem,
            serial=serial_hex(certificate.serial_number),
            kind=self.kind,
            subject=common_name,
            not_after=not_after,
            ca_certificate_pem=self.certificate_pem,
        )


def _read_ca_file(path: str, kind: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except FileNotFoundError:
        raise errors.CAUnusable(f"no {kind} CA file {path}; create the CAs with 'keramos ca init'") from None
    except OSError as error:
        raise errors.CAUnusable(f"cannot read {kind} CA file {path}: {error.strerror}") from None


def _load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    if isinstance(csr_pem, str):
        csr_pem = csr_pem.encode()
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as error:
        raise errors.MalformedPEM(f"CSR is not a PEM certificate signing request ({error})") from None
    try:
        valid = csr.is_signature_valid
        public_key = csr.public_key()
    except (ValueError, InvalidSignature, UnsupportedAlgorithm) as error:
        raise errors.CSRRejected(f"CSR cannot be verified ({error})") from None
    if not valid:
        raise errors.CSRRejected("CSR signature does not verify: it was not signed by its own key")
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < _MIN_RSA_BITS:
            raise errors.CSRRejected(
                f"CSR carries a {public_key.key_size}-bit RSA key; at least {_MIN_RSA_BITS} needed"
            )
    elif not (isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(public_key.curve, _ACCEPTED_CURVES)):
        raise errors.CSRRejected("CSR key must be RSA (2048 bits or more) or EC P-256/P-384/P-521")
    return csr


def _check_csr_identity(csr: x509.CertificateSigningRequest, expected: str) -> None:
    names = [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [expected]:
        raise errors.IdentityMismatch(
            f"CSR subject common name is {', '.join(names) or 'missing'}, expected {expected!r}"
        )
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return
    others = [str(getattr(name, "value", name)) for name in san if name != x509.DNSName(expected)]
    if others:
        raise errors.IdentityMismatch(f"CSR asks for names other than {expected!r}: {', '.join(others)}")


def published_revocations(path: str, authority: CertificateAuthority) -> dict[str, dt.datetime]:
    """The serials (hex) and revocation times listed by the CRL at ``path``.

    Empty when there is no CRL yet, or when it does not parse or was not signed by
    ``authority`` (a CA replaced with ``--force`` starts a new CRL).
    """
    try:
        with open(path, "rb") as stream:
            crl = x509.load_pem_x509_crl(stream.read())
    except (FileNotFoundError, ValueError):
        return {}
    if crl.issuer != authority.certificate.subject or not crl.is_signature_valid(authority.certificate.public_key()):
        return {}
    return {serial_hex(entry.serial_number): entry.revocation_date_utc for entry in crl}


def create_dual_ca(
    directory: str,
    passphrase: bytes,
    *,
    key_type: str = DEFAULT_KEY_TYPE,
    validity: dt.timedelta = dt.timedelta(days=3650),
    force: bool = False,
) -> dict[str, CertificateAuthority]:
    """Create the server CA and the client CA in ``directory``; return them by kind.

    Writes ``server_ca.pem``, ``client_ca.pem`` (0644) and their keys encrypted with
    ``passphrase`` (0600), all or none. Refuses with :class:`~errors.CAExists` to overwrite any
    of them unless ``force``.
    """
    return _create_authorities(
        directory, passphrase, CertKind.ALL, key_type=key_type, validity=validity, force=force
    )


def _create_authorities(
    directory: str,
    passphrase: bytes,
    kinds: Sequence[str],
    *,
    key_type: str,
    validity: dt.timedelta,
    force: bool,
) -> dict[str, CertificateAuthority]:
    """Create the CAs of ``kinds`` in ``directory``, all files or none, refusing to overwrite."""
    check_passphrase(passphrase)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    paths = [p(directory, kind) for kind in kinds for p in (ca_certificate_path, ca_key_path)]
    existing = [path for path in paths if os.path.exists(path)]
    if existing and not force:
        raise errors.CAExists(
            f"refusing to overwrite the existing {'/'.join(kinds)} CA file(s) {', '.join(existing)}; "
            "use --force to replace them (every certificate they issued stops verifying)"
        )
    authorities = {
        kind: CertificateAuthority.create(kind, key_type=key_type, validity=validity) for kind in kinds
    }
    files: dict[str, tuple[bytes, int]] = {}
    for kind, authority in authorities.items():
        files[ca_certificate_path(directory, kind)] = (authority.certificate_pem, PUBLIC_MODE)
        files[ca_key_path(directory, kind)] = (authority.key_pem(passphrase), PRIVATE_MODE)
    write_all_atomic(files)
    return authorities


def load_dual_ca(
    directory: str,
    passphrase: bytes,
    *,
    now: dt.datetime | None = None,
    first: str = CertKind.SERVER,
) -> dict[str, CertificateAuthority]:
    """Load both CAs from ``directory`` and check that they are really two different CAs.

    ``first`` is the kind of CA loaded first: the one the caller is about to sign with, so
    that a wrong passphrase is reported against the key the operator asked to use (issuing a
    client certificate names the client CA key), not against the other one.
    """
    check_passphrase(passphrase)
    order = [first, *(kind for kind in CertKind.ALL if kind != first)]
    authorities = {kind: CertificateAuthority.load(directory, kind, passphrase, now=now) for kind in order}
    server, client = authorities[CertKind.SERVER], authorities[CertKind.CLIENT]
    if server.certificate.public_key() == client.certificate.public_key():
        raise errors.CAUnusable(f"the server CA and the client CA in {directory} share one key; they must differ")
    return authorities


def check_passphrase(passphrase: bytes) -> bytes:
    """Return ``passphrase`` if it can protect a CA key (not empty)."""
    if not passphrase:
        raise ConfigError("the CA passphrase is empty; CA keys must be encrypted at rest")
    return passphrase


def create_proxy_ca(
    directory: str,
    passphrase: bytes,
    *,
    key_type: str = DEFAULT_KEY_TYPE,
    validity: dt.timedelta = dt.timedelta(days=3650),
    force: bool = False,
) -> CertificateAuthority:
    """Create the proxy CA in ``directory``: ``proxy_ca.pem`` (0644) and its encrypted key (0600).

    A third CA beside the dual CA, sharing its directory and passphrase. Refuses with
    :class:`~errors.CAExists` to overwrite it unless ``force``.
    """
    authorities = _create_authorities(
        directory, passphrase, (CertKind.PROXY,), key_type=key_type, validity=validity, force=force
    )
    return authorities[CertKind.PROXY]


def issue_proxy_certificate(
    directory: str,
    passphrase: bytes,
    common_name: str,
    role: str,
    *,
    ip_addresses: Sequence[str] = (),
    validity: dt.timedelta = dt.timedelta(days=365),
    key_type: str = DEFAULT_KEY_TYPE,
) -> IssuedCertificate:
    """A certificate and key from the proxy CA: ``role`` ``server`` for a ``keramos-proxy``,
    ``client`` for a controller that talks to proxies."""
    if role not in PROXY_ROLES:
        raise DriverError(f"proxy certificate role must be one of {', '.join(PROXY_ROLES)}, not {role!r}")
    check_passphrase(passphrase)
    authority = CertificateAuthority.load(directory, CertKind.PROXY, passphrase)
    return authority.issue(
        common_name,
        ip_addresses=ip_addresses,
        validity=validity,
        key_type=key_type,
        server_auth=role == "server",
    )
