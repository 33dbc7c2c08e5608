"""The errors of the certificate plugins, each naming the problem it reports.

CA problems are :class:`~keramos.framework.errors.ConfigError` (the operator must fix a file or
the passphrase); problems with what a caller sent or with a store are
:class:`~keramos.framework.errors.DriverError`.
"""

from __future__ import annotations

from keramos.framework.errors import ConfigError, DriverError, NotFound


class CAUnusable(ConfigError):
    """A CA cannot be loaded or used: missing file, not a CA, or one of the subclasses."""


class CAExists(CAUnusable):
    """``ca init`` would overwrite an existing CA and was not told to (``--force``)."""


class CAMalformed(CAUnusable):
    """A CA certificate or key file holds no parseable PEM of the expected type."""


class CAWrongPassphrase(CAUnusable):
    """The CA passphrase does not decrypt the CA key."""


class CAValidityError(CAUnusable):
    """The CA certificate is expired or not yet valid."""


class CAKeyMismatch(CAUnusable):
    """The CA key is not the key of the CA certificate."""


class MalformedPEM(DriverError):
    """PEM data sent by a caller (a CSR, a certificate, a key) that does not parse."""


class CSRRejected(DriverError):
    """A CSR that parses but must not be signed (bad signature, weak key, extra names)."""


class IdentityMismatch(CSRRejected):
    """A CSR whose subject or subject alternative names are not the expected identity."""


class KeyMismatch(DriverError):
    """A private key that is not the key of the certificate it comes with."""


class BadPassphrase(DriverError):
    """A passphrase that does not decrypt the private key it was given for."""


class Forbidden(DriverError):
    """The store refused the operation (permissions, policy, credentials)."""


class StoreUnreachable(DriverError):
    """The store cannot be reached now; trying again may help."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


class BundleNotFound(NotFound):
    """No certificate bundle is stored under the reference asked for."""
