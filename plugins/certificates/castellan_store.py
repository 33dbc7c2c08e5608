"""The ``castellan`` certificate manager: bundles in a secret store behind Castellan's key manager.

Castellan (an optional dependency: ``pip install 'keramos[castellan]'``) reaches Barbican or
Vault, chosen by its own ``[key_manager] backend`` option; credentials come from
``[key_manager] auth_type`` and friends. Each bundle is stored as one opaque secret (a JSON
document of its PEM parts), so a bundle is stored or deleted whole. Error cases and the errors
they raise are listed in ``doc/secret-stores.md``.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from oslo_config import cfg

from keramos.framework.contracts import CertificateBundle, CertManager
from keramos.framework.errors import ConfigError
from keramos.framework.pki import errors
from keramos.framework.pki.keys import load_certificate
from keramos.plugins.certificates.local_store import validate_bundle

GROUP = "cert_manager_castellan"

castellan_store_opts = [
    cfg.StrOpt(
        "secret_name_prefix",
        default="keramos-",
        help="Prefix of the names given to the secrets holding certificate bundles, so that "
        "operators can tell them apart in the secret store.",
    ),
]


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """The ``[cert_manager_castellan]`` options (Castellan lists its own ``[key_manager]``)."""
    return [(GROUP, list(castellan_store_opts))]


def _import_castellan() -> dict[str, Any]:
    try:
        return {
            "key_manager": importlib.import_module("castellan.key_manager"),
            "exception": importlib.import_module("castellan.common.exception"),
            "utils": importlib.import_module("castellan.common.utils"),
            "opaque_data": importlib.import_module("castellan.common.objects.opaque_data"),
        }
    except ImportError as error:
        raise ConfigError(
            "the castellan cert manager needs the 'castellan' package, which is not installed "
            f"({error}); install it with: pip install 'keramos[castellan]'"
        ) from None


class CastellanCertManager(CertManager):
    """Certificate bundles kept as opaque secrets through Castellan's key manager API."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        conf.register_opts(castellan_store_opts, group=GROUP)
        self._castellan = _import_castellan()
        self._exception = self._castellan["exception"]
        try:
            self.key_manager = self._castellan["key_manager"].API(conf)
            self._context = self._castellan["utils"].credential_factory(conf)
        except (
            self._exception.AuthTypeInvalidError,
            self._exception.InsufficientCredentialDataError,
        ) as error:
            raise ConfigError(f"castellan credentials: {error}; set [key_manager] auth_type and its options") from None
        except (ImportError, RuntimeError, cfg.Error) as error:
            raise ConfigError(f"castellan key manager [key_manager] backend cannot be loaded: {error}") from None
        self.name_prefix: str = conf.cert_manager_castellan.secret_name_prefix

    @contextmanager
    def _mapped_errors(self, action: str, ref: str) -> Iterator[None]:
        exception = self._exception
        try:
            yield
        except exception.ManagedObjectNotFoundError:
            raise errors.BundleNotFound(f"no certificate bundle {ref} in the secret store") from None
        except (
            exception.Forbidden,
            exception.InsufficientCredentialDataError,
            exception.AuthTypeInvalidError,
        ) as error:
            raise errors.Forbidden(f"the secret store refused to {action} certificate bundle {ref}: {error}") from None
        except (exception.KeyManagerError, ConnectionError, TimeoutError) as error:
            raise errors.StoreUnreachable(
                f"cannot {action} certificate bundle {ref}: secret store error: {error}"
            ) from None

    def _call(self, action: str, ref: str, method: Callable[..., Any], *args: Any) -> Any:
        with self._mapped_errors(action, ref):
            return method(self._context, *args)

    def store(self, bundle: CertificateBundle, *, name: str) -> str:
        validate_bundle(bundle)
        document = {
            "certificate": bundle.certificate.decode(),
            "intermediates": [item.decode() for item in bundle.intermediates],
            "private_key": None if bundle.private_key is None else bundle.private_key.decode(),
            "private_key_passphrase": (
                None if bundle.private_key_passphrase is None else bundle.private_key_passphrase.decode()
            ),
        }
        secret = self._castellan["opaque_data"].OpaqueData(
            json.dumps(document).encode(), name=f"{self.name_prefix}{name}"
        )
        return str(self._call("store", name, self.key_manager.store, secret))

    def get(self, ref: str) -> CertificateBundle:
        secret = self._call("read", ref, self.key_manager.get, ref)
        data = secret.get_encoded() if hasattr(secret, "get_encoded") else None
        try:
            document = json.loads(data)
            intermediates = tuple(item.encode() for item in document["intermediates"])
            key = document["private_key"]
            passphrase = document["private_key_passphrase"]
            certificate = document["certificate"].encode()
        except (ValueError, KeyError, TypeError, AttributeError):
            raise errors.MalformedPEM(f"secret {ref} is not a Keramos certificate bundle (malformed content)") from None
        load_certificate(certificate, what=f"certificate of bundle {ref}")
        return CertificateBundle(
            certificate=certificate,
            private_key=None if key is None else key.encode(),
            intermediates=intermediates,
            private_key_passphrase=None if passphrase is None else passphrase.encode(),
        )

    def delete(self, ref: str) -> None:
        try:
            self._call("delete", ref, self.key_manager.delete, ref)
        except errors.BundleNotFound:
            return
