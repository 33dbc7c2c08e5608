"""Contract for certificate generators: the controller's CAs (``keramos.cert_generator``)."""

from __future__ import annotations

import abc
import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence

from keramos.framework.contracts.base import Driver


class CertKind:
    """Which CA signs a certificate.

    Server certificates (amphora agents) and client certificates (the controller) come from
    different CAs, so that a stolen amphora certificate controls nothing else.
    """

    SERVER = "server"
    CLIENT = "client"
    ALL = (SERVER, CLIENT)
    #: The proxy CA, a third one apart from the dual CA: it signs the ``keramos-proxy``
    #: certificates and the controllers' client certificates for proxies, so that a proxy's
    #: certificate opens no amphora and an amphora's opens no proxy.
    PROXY = "proxy"


@dataclasses.dataclass(frozen=True)
class IssuedCertificate:
    """A freshly issued certificate.

    ``private_key_pem`` is ``None`` when the certificate was signed from a CSR: the key never left
    its owner. ``serial`` is lower-case hexadecimal.
    """

    certificate_pem: bytes
    private_key_pem: bytes | None
    serial: str
    kind: str
    subject: str
    not_after: dt.datetime
    ca_certificate_pem: bytes


class CertGenerator(Driver):
    """Issues server and client certificates from two distinct CAs."""

    kind = "cert_generator"

    @abc.abstractmethod
    def issue(
        self,
        common_name: str,
        kind: str,
        *,
        ip_addresses: Sequence[str] = (),
        validity: dt.timedelta | None = None,
    ) -> IssuedCertificate:
        """Generate a key pair and a certificate for ``common_name`` signed by the ``kind`` CA.

        The subject alternative names carry ``common_name`` and ``ip_addresses``. Server
        certificates allow serverAuth, client certificates clientAuth. Raises
        :class:`keramos.framework.errors.ConfigError` when the CA is not usable.
        """

    @abc.abstractmethod
    def sign_csr(
        self,
        csr_pem: bytes,
        kind: str,
        *,
        expected_common_name: str,
        validity: dt.timedelta | None = None,
    ) -> IssuedCertificate:
        """Sign a CSR whose signature verifies and whose subject is ``expected_common_name``.

        Raises :class:`keramos.framework.errors.DriverError` for a malformed CSR, a bad signature
        or another identity.
        """

    @abc.abstractmethod
    def ca_certificate(self, kind: str) -> bytes:
        """Return the PEM certificate of the ``kind`` CA (what peers verify against)."""

    @abc.abstractmethod
    def publish_crl(self, kind: str, revoked: Mapping[str, dt.datetime]) -> bytes:
        """Build the ``kind`` CA's CRL listing ``revoked`` and publish it; return it as PEM.

        ``revoked`` maps every revoked serial of that CA (lower-case hexadecimal) to its
        revocation time: the CRL is rebuilt whole each time, so publishing is idempotent.
        Raises :class:`keramos.framework.errors.DriverError` when it cannot be published.
        """
