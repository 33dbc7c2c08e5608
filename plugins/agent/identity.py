"""The agent's identity: its one-time activation by the controller and, in ``csr`` mode, the
server key it makes itself.

Activation (:class:`Activation`): an agent whose config drive holds an activation token starts
unactivated and refuses configuration changes until a controller (mutual TLS) takes the token
with ``POST /1.0/activate``. The agent then records itself activated in its state directory and
deletes the token file, so that the token is useless afterwards and a second activation is
refused. The amphora never activates itself.

``csr`` mode (:func:`prepare_server_identity`, :func:`server_csr`): the agent generates its own
EC P-256 key (0600, it never leaves the amphora), a self-signed bootstrap certificate so that
gunicorn can serve TLS at once, and on request a CSR naming the amphora id (CN and DNS SAN, as a
certificate issued by the controller does). The controller signs the CSR and installs the
certificate alone with ``PUT /1.0/certificate``.
"""

from __future__ import annotations

import datetime as dt
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keramos.framework.files import write_atomic

#: File in the state directory recording that the controller activated this agent.
ACTIVATED_MARKER = "activated"
#: How long the self-signed bootstrap certificate is valid (the controller replaces it at once).
BOOTSTRAP_VALIDITY = dt.timedelta(days=30)


class ActivationError(Exception):
    """The agent cannot be activated (``gone``: it already was, or its token is spent)."""

    def __init__(self, message: str, *, gone: bool) -> None:
        super().__init__(message)
        self.gone = gone


class Activation:
    """The activation state of an agent, kept in files so that every gunicorn worker and a
    restarted agent see the same state.

    ``token_file`` is the config drive's activation token; ``None`` means the agent was booted
    without one and is activated from the start.
    """

    def __init__(self, state_dir: str, token_file: str | None) -> None:
        self.marker = os.path.join(state_dir, ACTIVATED_MARKER)
        self.token_file = token_file

    @property
    def activated(self) -> bool:
        """Whether the controller activated this agent (or it needs no activation)."""
        return self.token_file is None or os.path.exists(self.marker)

    def token(self) -> str:
        """The unspent activation token; :class:`ActivationError` once activated or without one."""
        if self.activated:
            raise ActivationError("this amphora is already activated: its token is spent", gone=True)
        assert self.token_file is not None
        try:
            with open(self.token_file, encoding="ascii") as stream:
                token = stream.read().strip()
        except (OSError, UnicodeDecodeError) as error:
            raise ActivationError(f"cannot read the activation token: {error}", gone=True) from None
        if not token:
            raise ActivationError("the activation token file is empty", gone=True)
        return token

    def activate(self) -> str:
        """Record the agent activated, delete the token file and return the token, once.

        The marker is created exclusively, so that of two concurrent calls only one gets the
        token; it is written before the token file is deleted, so that an agent that stops in
        between stays activated (and deletes the leftover file on the next call).
        """
        try:
            token = self.token()
        except ActivationError:
            self._delete_token_file()
            raise
        os.makedirs(os.path.dirname(self.marker), mode=0o700, exist_ok=True)
        try:
            fd = os.open(self.marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ActivationError("this amphora is already activated: its token is spent", gone=True) from None
        os.close(fd)
        self._delete_token_file()
        return token

    def _delete_token_file(self) -> None:
        if self.token_file is not None and os.path.exists(self.marker):
            try:
                os.unlink(self.token_file)
            except FileNotFoundError:
                pass


def _amphora_name(amphora_id: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, amphora_id)])


def public_key_der(public_key) -> bytes:
    """A public key as DER SubjectPublicKeyInfo, to compare keys."""
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_server_key(key_path: str):
    """The agent's server private key from ``key_path`` (PEM, unencrypted)."""
    with open(key_path, "rb") as stream:
        return serialization.load_pem_private_key(stream.read(), password=None)


def _bootstrap_certificate(amphora_id: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_amphora_name(amphora_id))
        .issuer_name(_amphora_name(amphora_id))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + BOOTSTRAP_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(amphora_id)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def _certificate_matches(cert_path: str, key: ec.EllipticCurvePrivateKey) -> bool:
    try:
        with open(cert_path, "rb") as stream:
            certificate = x509.load_pem_x509_certificate(stream.read())
    except (OSError, ValueError):
        return False
    return public_key_der(certificate.public_key()) == public_key_der(key.public_key())


def prepare_server_identity(amphora_id: str, cert_path: str, key_path: str) -> None:
    """Make the agent's own server key (EC P-256, 0600) unless it has one, and a self-signed
    bootstrap certificate for it unless ``cert_path`` already certifies that key.

    A restarted agent keeps its key and the certificate the controller installed.
    """
    if os.path.exists(key_path):
        key = load_server_key(key_path)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_atomic(key_path, pem, 0o600, make_dirs=True)
    if not _certificate_matches(cert_path, key):
        write_atomic(cert_path, _bootstrap_certificate(amphora_id, key), 0o600, make_dirs=True)


def server_csr(amphora_id: str, key_path: str) -> bytes:
    """A PEM CSR for the agent's own key naming ``amphora_id`` (CN and the only DNS SAN)."""
    key = load_server_key(key_path)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_amphora_name(amphora_id))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(amphora_id)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)
