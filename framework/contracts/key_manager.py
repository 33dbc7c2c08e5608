"""Contract for key managers: where signing certificates live (``keramos.key_manager``)."""

from __future__ import annotations

import abc

from keramos.framework.contracts.base import Driver


class KeyManager(Driver):
    """Keeps the certificates that image signatures are verified against, by uuid."""

    kind = "key_manager"

    @abc.abstractmethod
    def get_certificate(self, certificate_uuid: str) -> bytes:
        """Return the certificate (PEM or DER) stored under ``certificate_uuid``.

        Raises :class:`~keramos.framework.errors.NotFound` for an unknown uuid.
        """

    @abc.abstractmethod
    def store_certificate(self, certificate: bytes) -> str:
        """Store a certificate and return its uuid. Undone by :meth:`delete`."""

    @abc.abstractmethod
    def delete(self, certificate_uuid: str) -> None:
        """Delete the certificate. Idempotent: an unknown uuid is not an error."""
