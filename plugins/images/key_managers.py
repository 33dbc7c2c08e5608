"""Key managers that keep image-signing certificates by uuid (``keramos.key_manager``).

``local``
    A directory of ``<uuid>.pem`` files (0600, written atomically), for development and small
    deployments.
``castellan``
    Barbican, Vault or any castellan backend, for production. castellan is an optional extra
    (``pip install keramos[castellan]``) imported only when this driver is built.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from typing import Any

from cryptography.hazmat.primitives import serialization
from oslo_config import cfg

from keramos.framework.contracts import KeyManager
from keramos.framework.errors import ConfigError, DriverError, NotFound
from keramos.framework.files import write_atomic
from keramos.framework.images.certificate_validation import load_certificates

LOCAL_GROUP = "local_key_manager"
CASTELLAN_GROUP = "castellan_key_manager"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

local_key_manager_opts = [
    cfg.StrOpt(
        "directory",
        default="$state_path/image_certificates",
        help="Directory where the local key manager keeps signing certificates, one "
        "<uuid>.pem file each (created 0700 if missing).",
    ),
]

castellan_key_manager_opts = [
    cfg.StrOpt(
        "backend",
        default="barbican",
        help="castellan key manager backend (barbican, vault) the certificates are kept in.",
    ),
    cfg.StrOpt(
        "auth_type",
        default="keystone_password",
        help="castellan credential type used to reach the backend (see castellan's "
        "[key_manager] auth_type).",
    ),
]


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """The options of both key managers, for the sample-config generator."""
    return [
        (LOCAL_GROUP, list(local_key_manager_opts)),
        (CASTELLAN_GROUP, list(castellan_key_manager_opts)),
    ]


def _check_uuid(certificate_uuid: str) -> str:
    normalised = str(certificate_uuid).strip().lower()
    if not _UUID.fullmatch(normalised):
        raise NotFound(f"no certificate {certificate_uuid!r}: not a uuid")
    return normalised


class LocalKeyManager(KeyManager):
    """Certificates kept as files in a local directory, by uuid."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        conf.register_opts(local_key_manager_opts, group=LOCAL_GROUP)
        self.directory = conf[LOCAL_GROUP].directory
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError as error:
            raise ConfigError(
                f"[{LOCAL_GROUP}] directory {self.directory}: {error.strerror}"
            ) from error
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise ConfigError(f"[{LOCAL_GROUP}] directory {self.directory} is not writable")

    def _path(self, certificate_uuid: str) -> str:
        return os.path.join(self.directory, f"{_check_uuid(certificate_uuid)}.pem")

    def get_certificate(self, certificate_uuid: str) -> bytes:
        try:
            with open(self._path(certificate_uuid), "rb") as pem_file:
                return pem_file.read()
        except FileNotFoundError:
            raise NotFound(f"no certificate {certificate_uuid}") from None

    def store_certificate(self, certificate: bytes) -> str:
        """Store a PEM or DER certificate (or a PEM bundle with its intermediates)."""
        load_certificates(certificate)
        certificate_uuid = str(uuid.uuid4())
        self.write(certificate_uuid, certificate)
        return certificate_uuid

    def write(self, certificate_uuid: str, certificate: bytes) -> None:
        """Store ``certificate`` under a uuid chosen by the caller (imports, tests)."""
        write_atomic(self._path(certificate_uuid), certificate, 0o600)

    def delete(self, certificate_uuid: str) -> None:
        try:
            path = self._path(certificate_uuid)
        except NotFound:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class CastellanKeyManager(KeyManager):
    """Certificates kept in a castellan backend (Barbican, Vault) by their managed-object id."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        conf.register_opts(castellan_key_manager_opts, group=CASTELLAN_GROUP)
        try:
            from castellan import key_manager as castellan_key_manager
            from castellan import options as castellan_options
            from castellan.common import utils as castellan_utils
            from castellan.common.objects import x_509
        except ImportError as error:
            raise ConfigError(
                "the castellan key manager needs the 'castellan' package "
                f"(pip install 'keramos[castellan]'): {error}"
            ) from error
        group = conf[CASTELLAN_GROUP]
        castellan_options.set_defaults(conf, backend=group.backend, auth_type=group.auth_type)
        self._x509 = x_509.X509
        try:
            self._manager = castellan_key_manager.API(conf)
            self._context = castellan_utils.credential_factory(conf)
        except Exception as error:
            raise ConfigError(f"castellan key manager ({group.backend}): {error}") from error

    def _call(self, action: str, function: Any, *args: Any) -> Any:
        try:
            return function(self._context, *args)
        except Exception as error:
            # castellan raises ManagedObjectNotFoundError for an unknown id whatever the backend.
            if type(error).__name__ == "ManagedObjectNotFoundError":
                raise NotFound(f"castellan: {action}: {error}") from error
            raise DriverError(f"castellan: {action} failed: {error}", retryable=True) from error

    def get_certificate(self, certificate_uuid: str) -> bytes:
        managed = self._call(f"get {certificate_uuid}", self._manager.get, certificate_uuid)
        return bytes(managed.get_encoded())

    def store_certificate(self, certificate: bytes) -> str:
        """Store the (first) certificate, DER-encoded as castellan's X509 objects hold it."""
        der = load_certificates(certificate)[0].public_bytes(serialization.Encoding.DER)
        return str(self._call("store certificate", self._manager.store, self._x509(der)))

    def delete(self, certificate_uuid: str) -> None:
        try:
            self._call(f"delete {certificate_uuid}", self._manager.delete, certificate_uuid)
        except NotFound:
            return
