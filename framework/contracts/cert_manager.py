"""Contract for certificate managers: where TLS material is kept (``keramos.cert_manager``)."""

from __future__ import annotations

import abc
import dataclasses

from keramos.framework.contracts.base import Driver


@dataclasses.dataclass(frozen=True)
class CertificateBundle:
    """A certificate with its private key, intermediates and the key's passphrase, all PEM."""

    certificate: bytes
    private_key: bytes | None = None
    intermediates: tuple[bytes, ...] = ()
    private_key_passphrase: bytes | None = None


class CertManager(Driver):
    """Stores and fetches certificate bundles by reference.

    Error cases every implementation maps to Keramos errors: a reference that does not exist
    (:class:`~keramos.framework.errors.NotFound`), a store that refuses or cannot be reached
    (:class:`~keramos.framework.errors.DriverError`, ``retryable`` for the latter).
    """

    kind = "cert_manager"

    @abc.abstractmethod
    def store(self, bundle: CertificateBundle, *, name: str) -> str:
        """Store ``bundle`` and return an opaque reference to it. Undone by :meth:`delete`."""

    @abc.abstractmethod
    def get(self, ref: str) -> CertificateBundle:
        """Return the bundle stored under ``ref``."""

    @abc.abstractmethod
    def delete(self, ref: str) -> None:
        """Delete the bundle. Idempotent: an unknown reference is not an error."""

    def find(self, name: str) -> list[str]:
        """Return the references of the bundles stored under ``name``.

        Optional: a resumed ``issue_amphora_server_cert`` asks it for the bundle an earlier
        attempt stored before its worker died and before the state store recorded it, and deletes
        it. The default finds nothing, so a manager that cannot look bundles up by name may keep
        such a bundle.
        """
        return []
