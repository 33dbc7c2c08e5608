"""The ``local`` certificate generator: the dual CA kept in files on the controller.

Both CA keys are decrypted once, when the driver is built, and kept in memory for every
signing that follows; the driver refuses to start if either CA is unusable.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import threading
from collections.abc import Mapping, Sequence

from oslo_config import cfg

from keramos.framework.contracts import CertGenerator, CertKind, IssuedCertificate
from keramos.framework.errors import ConfigError, DriverError
from keramos.plugins.certificates.ca import (
    CertificateAuthority,
    crl_path,
    load_dual_ca,
    published_revocations,
)
from keramos.plugins.certificates.files import PUBLIC_MODE, locked, write_atomic
from keramos.plugins.certificates.keys import DEFAULT_KEY_TYPE, KEY_TYPES

GROUP = "certificates"

certificates_opts = [
    cfg.StrOpt(
        "ca_dir",
        default="$state_path/ca",
        help="Directory holding server_ca.pem, client_ca.pem, their encrypted keys "
        "(server_ca_key.pem, client_ca_key.pem) and the published CRLs; 'keramos ca init' "
        "creates it.",
    ),
    cfg.StrOpt(
        "ca_passphrase",
        secret=True,
        help="Passphrase that decrypts the CA keys. Prefer ca_passphrase_file; set only one.",
    ),
    cfg.StrOpt(
        "ca_passphrase_file",
        help="File whose content (trailing newline removed) is the CA passphrase; keep it 0600.",
    ),
    cfg.StrOpt(
        "key_type",
        default=DEFAULT_KEY_TYPE,
        choices=list(KEY_TYPES),
        help="Key type of the certificates issued (and of the CAs 'keramos ca init' creates).",
    ),
    cfg.IntOpt(
        "validity_days",
        default=365,
        min=1,
        help="Days an issued certificate is valid, unless the request says otherwise "
        "(never beyond the CA's own expiry).",
    ),
    cfg.IntOpt(
        "ca_validity_days",
        default=3650,
        min=1,
        help="Days the CAs created by 'keramos ca init' are valid.",
    ),
    cfg.IntOpt(
        "crl_validity_days",
        default=7,
        min=1,
        help="Days until the nextUpdate of each published CRL; republish before then.",
    ),
    cfg.StrOpt(
        "rotation_window",
        default="30d",
        help="Certificates expiring within this time are rotated by the worker's periodic task: "
        "seconds ('86400') or days with a 'd' suffix ('30d').",
    ),
    cfg.IntOpt(
        "rotation_batch_size",
        default=50,
        min=1,
        help="Most rotations the periodic task casts in one run; the rest wait for the next run.",
    ),
    cfg.IntOpt(
        "rotation_check_interval",
        default=3600,
        min=0,
        help="Seconds between two runs of the worker's periodic task that casts rotate_certificate "
        "for certificates inside rotation_window; 0 turns it off.",
    ),
]


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """The ``[certificates]`` options, for the sample configuration generator."""
    return [(GROUP, list(certificates_opts))]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register ``[certificates]`` on ``conf`` (idempotent)."""
    conf.register_opts(certificates_opts, group=GROUP)


def parse_duration(value: str) -> dt.timedelta:
    """Parse ``'86400'`` (seconds), ``'86400s'`` or ``'30d'`` (days) into a timedelta."""
    match = re.fullmatch(r"\s*(\d+)\s*([sd]?)\s*", str(value))
    if not match:
        raise ConfigError(f"duration {value!r} is neither seconds ('86400') nor days with a 'd' suffix ('30d')")
    amount, unit = int(match.group(1)), match.group(2)
    return dt.timedelta(days=amount) if unit == "d" else dt.timedelta(seconds=amount)


def rotation_settings(conf: cfg.ConfigOpts) -> tuple[dt.timedelta, int]:
    """``(rotation_window, rotation_batch_size)`` from ``[certificates]``, for the periodic task."""
    register_opts(conf)
    return parse_duration(conf.certificates.rotation_window), conf.certificates.rotation_batch_size


def read_passphrase_file(path: str) -> bytes:
    """The passphrase in ``path``, without its trailing newline."""
    try:
        with open(path, "rb") as stream:
            passphrase = stream.read().rstrip(b"\r\n")
    except OSError as error:
        raise ConfigError(f"cannot read the CA passphrase file {path}: {error.strerror}") from None
    if not passphrase:
        raise ConfigError(f"the CA passphrase file {path} is empty")
    return passphrase


def configured_passphrase(conf: cfg.ConfigOpts) -> bytes | None:
    """The CA passphrase from ``[certificates]`` (file or value), or ``None`` if neither is set."""
    register_opts(conf)
    group = conf.certificates
    if group.ca_passphrase and group.ca_passphrase_file:
        raise ConfigError("[certificates] ca_passphrase and ca_passphrase_file are both set; keep one")
    if group.ca_passphrase_file:
        return read_passphrase_file(group.ca_passphrase_file)
    if group.ca_passphrase:
        return group.ca_passphrase.encode()
    return None


class LocalCertGenerator(CertGenerator):
    """Issues certificates from the server CA and the client CA in ``[certificates] ca_dir``.

    ``passphrase`` overrides the configured one (the CLI passes what the operator gave it).
    """

    def __init__(self, conf: cfg.ConfigOpts, *, passphrase: bytes | None = None) -> None:
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
        self.authorities: dict[str, CertificateAuthority] = load_dual_ca(self.ca_dir, passphrase)
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
