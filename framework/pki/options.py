"""The ``[certificates]`` options: where the dual CA lives, how it is unlocked, what it issues
and when certificates are rotated.

Read by the ``local`` certificate generator, by ``keramos ca`` and ``keramos cert``, and by the
certificate flows (rotation), so they live here, beside the CA itself, and nowhere else.
"""

from __future__ import annotations

import datetime as dt
import re

from oslo_config import cfg

from keramos.framework.errors import ConfigError
from keramos.framework.pki.keys import DEFAULT_KEY_TYPE, KEY_TYPES

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
