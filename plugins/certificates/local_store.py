"""The ``local`` certificate manager: bundles in files under a state directory.

For development and single-controller deployments. Each bundle is one JSON file (mode 0600,
written atomically) named by its reference; its private key is re-encrypted with the store's
own passphrase, whatever passphrase it arrived with. Error cases and the errors they raise are
listed in ``doc/secret-stores.md``.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from typing import Any

from oslo_config import cfg

from keramos.framework.contracts import CertificateBundle, CertManager
from keramos.framework.errors import ConfigError, DriverError
from keramos.framework.files import PRIVATE_MODE, write_atomic
from keramos.framework.pki import errors
from keramos.framework.pki.keys import (
    key_matches,
    load_certificate,
    load_private_key,
    private_key_pem,
)
from keramos.framework.pki.options import read_passphrase_file

GROUP = "cert_manager_local"
#: Bundle names become file names: no slashes, no leading dot, room left for the reference suffix.
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
_REF_PATTERN = re.compile(rf"{_NAME_PATTERN.pattern}\.[0-9a-f]{{32}}")

local_store_opts = [
    cfg.StrOpt(
        "storage_path",
        default="$state_path/certificates",
        help="Directory where certificate bundles are kept (created 0700 if missing).",
    ),
    cfg.StrOpt(
        "passphrase",
        secret=True,
        help="Passphrase that encrypts the private keys of stored bundles. Prefer passphrase_file; set only one.",
    ),
    cfg.StrOpt(
        "passphrase_file",
        help="File whose content (trailing newline removed) is the store's passphrase.",
    ),
]


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """The ``[cert_manager_local]`` options, for the sample configuration generator."""
    return [(GROUP, list(local_store_opts))]


def validate_bundle(bundle: CertificateBundle) -> Any:
    """Check a bundle before it is stored; return its decrypted private key (or ``None``).

    Raises :class:`~errors.MalformedPEM` (certificate, intermediate or key does not parse),
    :class:`~errors.BadPassphrase` (``private_key_passphrase`` does not decrypt the key) or
    :class:`~errors.KeyMismatch` (the key is not the certificate's).
    """
    certificate = load_certificate(bundle.certificate, what="the bundle's certificate")
    for index, intermediate in enumerate(bundle.intermediates):
        load_certificate(intermediate, what=f"intermediate certificate #{index + 1}")
    if bundle.private_key is None:
        return None
    key = load_private_key(bundle.private_key, bundle.private_key_passphrase, what="the bundle's private key")
    if not key_matches(certificate, key):
        raise errors.KeyMismatch("the bundle's private key is not the key of its certificate")
    return key


class LocalCertManager(CertManager):
    """Certificate bundles kept in 0600 JSON files under ``[cert_manager_local] storage_path``."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        conf.register_opts(local_store_opts, group=GROUP)
        group = conf.cert_manager_local
        if group.passphrase and group.passphrase_file:
            raise ConfigError(f"[{GROUP}] passphrase and passphrase_file are both set; keep one")
        if group.passphrase_file:
            self._passphrase = read_passphrase_file(group.passphrase_file)
        elif group.passphrase:
            self._passphrase = group.passphrase.encode()
        else:
            raise ConfigError(f"[{GROUP}] passphrase_file (or passphrase) must be set: stored keys are encrypted")
        self.storage_path: str = group.storage_path
        try:
            os.makedirs(self.storage_path, mode=0o700, exist_ok=True)
        except OSError as error:
            raise ConfigError(
                f"[{GROUP}] storage_path {self.storage_path} cannot be created: {error.strerror}"
            ) from None

    def _path(self, ref: str) -> str:
        if not isinstance(ref, str) or not _REF_PATTERN.fullmatch(ref):
            raise errors.BundleNotFound(f"no certificate bundle {ref!r} (not a local reference)")
        return os.path.join(self.storage_path, f"{ref}.json")

    def _os_error(self, error: OSError, action: str, ref: str) -> DriverError:
        if isinstance(error, PermissionError):
            return errors.Forbidden(f"cannot {action} certificate bundle {ref}: permission denied")
        return errors.StoreUnreachable(
            f"cannot {action} certificate bundle {ref} in {self.storage_path}: {error.strerror or error}"
        )

    def _check_reachable(self, action: str, ref: str) -> None:
        if not os.path.isdir(self.storage_path):
            raise errors.StoreUnreachable(
                f"cannot {action} certificate bundle {ref}: storage directory {self.storage_path} is missing"
            )

    def store(self, bundle: CertificateBundle, *, name: str) -> str:
        if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
            raise DriverError(
                f"bundle name {name!r} is not an identifier (letters, digits, '.', '_', '-', at most 200 characters)"
            )
        key = validate_bundle(bundle)
        ref = f"{name}.{uuid.uuid4().hex}"
        document = {
            "certificate": bundle.certificate.decode(),
            "intermediates": [item.decode() for item in bundle.intermediates],
            "private_key": None if key is None else private_key_pem(key, self._passphrase).decode(),
        }
        self._check_reachable("store", ref)
        try:
            write_atomic(self._path(ref), json.dumps(document).encode(), PRIVATE_MODE)
        except OSError as error:
            raise self._os_error(error, "store", ref) from None
        return ref

    def get(self, ref: str) -> CertificateBundle:
        """Return the bundle; its private key comes back unencrypted (PKCS#8 PEM)."""
        path = self._path(ref)
        self._check_reachable("read", ref)
        try:
            with open(path, "rb") as stream:
                raw = stream.read()
        except FileNotFoundError:
            raise errors.BundleNotFound(f"no certificate bundle {ref}") from None
        except OSError as error:
            raise self._os_error(error, "read", ref) from None
        try:
            document = json.loads(raw)
            certificate = document["certificate"].encode()
            intermediates = tuple(item.encode() for item in document["intermediates"])
            stored_key = document["private_key"]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise errors.MalformedPEM(f"certificate bundle {ref} is corrupt: {path}") from None
        load_certificate(certificate, what=f"certificate of bundle {ref}")
        private_key = None
        if stored_key is not None:
            try:
                key = load_private_key(stored_key.encode(), self._passphrase, what=f"private key of bundle {ref}")
            except errors.BadPassphrase:
                raise errors.BadPassphrase(
                    f"[{GROUP}] passphrase does not decrypt the private key of bundle {ref}; "
                    "was it stored with another passphrase?"
                ) from None
            private_key = private_key_pem(key)
        return CertificateBundle(certificate, private_key, intermediates)

    def find(self, name: str) -> list[str]:
        """The references stored under ``name``: the files ``<name>.<32 hex digits>.json``."""
        if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
            return []
        pattern = re.compile(rf"{re.escape(name)}\.[0-9a-f]{{32}}")
        self._check_reachable("list", name)
        try:
            entries = os.listdir(self.storage_path)
        except OSError as error:
            raise self._os_error(error, "list", name) from None
        return sorted(
            entry.removesuffix(".json")
            for entry in entries
            if entry.endswith(".json") and pattern.fullmatch(entry.removesuffix(".json"))
        )

    def delete(self, ref: str) -> None:
        try:
            path = self._path(ref)
        except errors.BundleNotFound:
            return
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as error:
            raise self._os_error(error, "delete", ref) from None
