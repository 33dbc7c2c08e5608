"""The ``local`` certificate generator: the dual CA kept in files on the controller.

Both CA keys are decrypted once, when the driver is built, and kept in memory for every
signing that follows; the driver refuses to start if either CA is unusable.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Mapping, Sequence

from oslo_config import cfg

from keramos.framework.contracts import CertGenerator, CertKind, IssuedCertificate
from keramos.framework.errors import ConfigError, DriverError
from keramos.framework.files import PUBLIC_MODE, locked, write_atomic
from keramos.framework.pki.ca import (
    CertificateAuthority,
    crl_path,
    load_dual_ca,
    published_revocations,
)
from keramos.framework.pki.options import configured_passphrase, register_opts


class LocalCertGenerator(CertGenerator):
    """Issues certificates from the server CA and the client CA in ``[certificates] ca_dir``.

    ``passphrase`` overrides the configured one (the CLI passes what the operator gave it).
    ``first_kind`` is the CA the caller is about to use (``keramos cert issue --kind client``):
    it is loaded first, so that a wrong passphrase names that CA's key.
    """

    def __init__(
        self,
        conf: cfg.ConfigOpts,
        *,
        passphrase: bytes | None = None,
        first_kind: str = CertKind.SERVER,
    ) -> None:
        super().__init__(conf)
        register_opts(conf)
        group = conf.certificates
        passphrase = passphrase if passphrase is not None else configured_passphrase(conf)
        if not passphrase:
            raise ConfigError("no CA passphrase: set [certificates] ca_passphrase_file (or ca_passphrase)")
        self.ca_dir: str = group.ca_dir
        self.key_type: str = group.key_type
        self.validity = dt.timedelta(days=group.validity_days)
        self.crl_validity = dt.timedelta(days=group.crl_validity_days)
        self.authorities: dict[str, CertificateAuthority] = load_dual_ca(
            self.ca_dir, passphrase, first=first_kind
        )
        self._crl_lock = threading.Lock()

    def _authority(self, kind: str) -> CertificateAuthority:
        try:
            return self.authorities[kind]
        except KeyError:
            raise DriverError(f"certificate kind must be one of {', '.join(CertKind.ALL)}, not {kind!r}") from None

    def issue(
        self,
        common_name: str,
        kind: str,
        *,
        ip_addresses: Sequence[str] = (),
        validity: dt.timedelta | None = None,
    ) -> IssuedCertificate:
        return self._authority(kind).issue(
            common_name,
            ip_addresses=ip_addresses,
            validity=validity or self.validity,
            key_type=self.key_type,
        )

    def sign_csr(
        self,
        csr_pem: bytes,
        kind: str,
        *,
        expected_common_name: str,
        validity: dt.timedelta | None = None,
    ) -> IssuedCertificate:
        return self._authority(kind).sign_csr(
            csr_pem, expected_common_name=expected_common_name, validity=validity or self.validity
        )

    def ca_certificate(self, kind: str) -> bytes:
        return self._authority(kind).certificate_pem

    def publish_crl(self, kind: str, revoked: Mapping[str, dt.datetime]) -> bytes:
        """Write the ``kind`` CA's CRL to ``<ca_dir>/<kind>_ca_crl.pem`` and return it.

        The published CRL only grows: serials that the CRL already on disk lists (signed by
        this CA) stay listed, so two revocations published at once by different workers cannot
        drop each other. A file lock serialises publishers sharing ``ca_dir``.
        """
        authority = self._authority(kind)
        path = crl_path(self.ca_dir, kind)
        try:
            with self._crl_lock, locked(f"{path}.lock"):
                merged = {**published_revocations(path, authority), **revoked}
                crl = authority.crl(merged, next_update=self.crl_validity)
                write_atomic(path, crl, PUBLIC_MODE)
        except OSError as error:
            raise DriverError(f"cannot publish the {kind} CRL to {path}: {error.strerror}") from None
        return crl

    def crl_location(self, kind: str) -> str:
        """Where :meth:`publish_crl` writes the ``kind`` CRL."""
        return os.path.abspath(crl_path(self.ca_dir, kind))
