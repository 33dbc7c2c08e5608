"""Tasks of the certificate flows: issue, store, push, record, revoke, publish the CRL.

Private keys never enter the flow's store (which the persistence backend writes to disk): the
task that issues a certificate hands the key straight to the certificate manager, which keeps
it encrypted, and later tasks fetch it back by reference.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from cryptography.hazmat.primitives import serialization
from oslo_log import log as logging
from taskflow import task
from taskflow.types import failure

from keramos.framework.contracts import (
    AmphoraDriver,
    AmphoraEndpoint,
    CertGenerator,
    CertificateBundle,
    CertKind,
    CertManager,
    StateStore,
)
from keramos.framework.errors import DriverError, NotFound
from keramos.framework.records import AmphoraRecord, AmphoraStatus, CertificateRecord, utcnow

LOG = logging.getLogger(__name__)


class CertificateStatus:
    """Values of :attr:`CertificateRecord.status`."""

    ACTIVE = "active"
    SUPERSEDED = "superseded"
    REVOKED = "revoked"


def certificates_due_for_rotation(
    state_store: StateStore, now: dt.datetime, window: dt.timedelta, limit: int
) -> list[CertificateRecord]:
    """Active server certificates of READY amphorae expiring before ``now + window``.

    Soonest expiry first, ``limit`` at most. The worker's periodic task casts
    ``rotate_certificate`` for each, in batches of ``limit``; a rotated certificate becomes
    ``superseded`` and leaves the list. Amphorae that are not READY (booting, in error, being
    deleted) are skipped, so that they cannot fill every batch with rotations bound to fail.
    """
    deadline = now + window
    candidates = sorted(
        (
            record
            for record in state_store.find(CertificateRecord, kind=CertKind.SERVER, status=CertificateStatus.ACTIVE)
            if record.amphora_id is not None and record.not_after <= deadline
        ),
        key=lambda record: record.not_after,
    )
    due: list[CertificateRecord] = []
    for record in candidates:
        if len(due) >= limit:
            break
        amphora = state_store.get(AmphoraRecord, record.amphora_id)
        if amphora is not None and amphora.status == AmphoraStatus.READY:
            due.append(record)
    return due


def revoked_serials(state_store: StateStore, kind: str) -> dict[str, dt.datetime]:
    """Every revoked serial of the ``kind`` CA with its revocation time: what its CRL lists."""
    return {
        record.serial: record.revoked_at or record.updated_at
        for record in state_store.find(CertificateRecord, kind=kind, status=CertificateStatus.REVOKED)
    }


def pem_bundle(bundle: CertificateBundle) -> bytes:
    """Certificate, intermediates and unencrypted key concatenated: what an amphora agent installs."""
    if bundle.private_key is None:
        raise DriverError("the stored certificate has no private key to install on the amphora")
    key = bundle.private_key
    if bundle.private_key_passphrase:
        try:
            decrypted = serialization.load_pem_private_key(key, bundle.private_key_passphrase)
        except (ValueError, TypeError):
            raise DriverError("the stored key's passphrase does not decrypt it") from None
        key = decrypted.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    return b"".join((bundle.certificate, *bundle.intermediates, key))


class IssueCertificate(task.Task):
    """Issue a certificate (or sign the CSR given) and store it in the certificate manager.

    Provides ``issued_certificate``: a dict of ``serial``, ``kind``, ``subject``, ``not_after``
    (ISO 8601), ``cert_ref``, ``certificate_pem`` and ``ca_certificate_pem``; no private key.
    Revert deletes the stored bundle.
    """

    def __init__(self, cert_generator: CertGenerator, cert_manager: CertManager, **kwargs: Any) -> None:
        kwargs.setdefault("name", "issue_certificate")
        super().__init__(provides="issued_certificate", **kwargs)
        self.cert_generator = cert_generator
        self.cert_manager = cert_manager

    def execute(
        self,
        common_name: str,
        kind: str,
        ip_addresses: list[str] | None = None,
        validity_days: int | None = None,
        csr_pem: str | None = None,
    ) -> dict[str, Any]:
        validity = dt.timedelta(days=validity_days) if validity_days else None
        if csr_pem:
            issued = self.cert_generator.sign_csr(
                csr_pem.encode(), kind, expected_common_name=common_name, validity=validity
            )
        else:
            issued = self.cert_generator.issue(
                common_name, kind, ip_addresses=tuple(ip_addresses or ()), validity=validity
            )
        bundle = CertificateBundle(certificate=issued.certificate_pem, private_key=issued.private_key_pem)
        cert_ref = self.cert_manager.store(bundle, name=f"{common_name}-{kind}")
        return {
            "serial": issued.serial,
            "kind": issued.kind,
            "subject": issued.subject,
            "not_after": issued.not_after.isoformat(),
            "cert_ref": cert_ref,
            "certificate_pem": issued.certificate_pem.decode(),
            "ca_certificate_pem": issued.ca_certificate_pem.decode(),
        }

    def revert(self, result: Any, **kwargs: Any) -> None:
        if isinstance(result, dict):
            self.cert_manager.delete(result["cert_ref"])


class RecordCertificate(task.Task):
    """Record the issued certificate; for an amphora's server certificate, point the amphora at it.

    ``previous_serial`` (when rotating) is marked ``superseded``. Revert deletes the new record
    and restores the previous one and the amphora's pointer.
    """

    def __init__(self, state_store: StateStore, **kwargs: Any) -> None:
        kwargs.setdefault("name", "record_certificate")
        super().__init__(**kwargs)
        self.state_store = state_store

    def execute(
        self,
        issued_certificate: dict[str, Any],
        amphora_id: str | None = None,
        previous_serial: str | None = None,
    ) -> None:
        self.state_store.save(
            CertificateRecord(
                serial=issued_certificate["serial"],
                kind=issued_certificate["kind"],
                subject=issued_certificate["subject"],
                not_after=dt.datetime.fromisoformat(issued_certificate["not_after"]),
                amphora_id=amphora_id,
                cert_ref=issued_certificate["cert_ref"],
                previous_serial=previous_serial,
            )
        )
        if previous_serial is not None:
            self.state_store.update(CertificateRecord, previous_serial, status=CertificateStatus.SUPERSEDED)
        if amphora_id is not None and issued_certificate["kind"] == CertKind.SERVER:
            if self.state_store.get(AmphoraRecord, amphora_id) is not None:
                self.state_store.update(AmphoraRecord, amphora_id, cert_serial=issued_certificate["serial"])

    def revert(
        self,
        issued_certificate: dict[str, Any],
        result: Any,
        amphora_id: str | None = None,
        previous_serial: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.state_store.delete(CertificateRecord, issued_certificate["serial"])
        if previous_serial is not None:
            if self.state_store.get(CertificateRecord, previous_serial) is not None:
                self.state_store.update(CertificateRecord, previous_serial, status=CertificateStatus.ACTIVE)
        if amphora_id is not None:
            amphora = self.state_store.get(AmphoraRecord, amphora_id)
            if amphora is not None and amphora.cert_serial == issued_certificate["serial"]:
                self.state_store.update(AmphoraRecord, amphora_id, cert_serial=previous_serial)


class FindCurrentCertificate(task.Task):
    """Find the amphora's active server certificate and where its agent answers.

    Provides ``previous_serial``, ``previous_cert_ref``, ``common_name``, ``kind`` and
    ``amphora_endpoint`` (a dict of ``amphora_id``, ``address``, ``port``).
    """

    def __init__(self, state_store: StateStore, **kwargs: Any) -> None:
        kwargs.setdefault("name", "find_current_certificate")
        provides = (
            "previous_serial",
            "previous_cert_ref",
            "common_name",
            "kind",
            "amphora_endpoint",
        )
        super().__init__(provides=provides, **kwargs)
        self.state_store = state_store

    def execute(self, amphora_id: str, serial: str | None = None) -> tuple:
        amphora = self.state_store.get(AmphoraRecord, amphora_id)
        if amphora is None:
            raise NotFound(f"no amphora {amphora_id}")
        if not amphora.address:
            raise DriverError(f"amphora {amphora_id} has no address to push a certificate to")
        if serial is not None:
            serial = serial.lower()
            current = self.state_store.get(CertificateRecord, serial)
            if current is None or current.amphora_id != amphora_id:
                raise NotFound(f"no certificate {serial} for amphora {amphora_id}")
        else:
            active = self.state_store.find(
                CertificateRecord,
                amphora_id=amphora_id,
                kind=CertKind.SERVER,
                status=CertificateStatus.ACTIVE,
            )
            if not active:
                raise NotFound(f"amphora {amphora_id} has no active server certificate to rotate")
            current = active[-1]
        if current.status != CertificateStatus.ACTIVE:
            raise DriverError(f"certificate {current.serial} is {current.status}, not active")
        endpoint = AmphoraEndpoint.of(amphora_id, amphora.to_dict(), "agent_port").to_dict()
        return current.serial, current.cert_ref, current.subject, current.kind, endpoint


class PushCertificate(task.Task):
    """Install the new certificate and key on the amphora's agent.

    Revert installs the previous certificate again when the certificate manager still holds it,
    so that the agent is left serving the certificate the records say it has.
    """

    def __init__(self, amphora: AmphoraDriver, cert_manager: CertManager, **kwargs: Any) -> None:
        kwargs.setdefault("name", "push_certificate")
        super().__init__(**kwargs)
        self.amphora = amphora
        self.cert_manager = cert_manager

    def execute(self, amphora_endpoint: dict[str, Any], issued_certificate: dict[str, Any]) -> None:
        bundle = self.cert_manager.get(issued_certificate["cert_ref"])
        self.amphora.install_certificate(AmphoraEndpoint(**amphora_endpoint), pem_bundle(bundle))

    def revert(
        self,
        amphora_endpoint: dict[str, Any],
        previous_cert_ref: str | None,
        result: Any,
        **kwargs: Any,
    ) -> None:
        if previous_cert_ref is None:
            return
        try:
            previous = self.cert_manager.get(previous_cert_ref)
        except NotFound:
            return
        if previous.private_key is None:
            return
        endpoint = AmphoraEndpoint(**amphora_endpoint)
        if not isinstance(result, failure.Failure):
            self.amphora.install_certificate(endpoint, pem_bundle(previous))
            return
        # The push itself failed, so the agent most likely still serves the previous
        # certificate; reinstalling it is a precaution that an unreachable agent may refuse.
        try:
            self.amphora.install_certificate(endpoint, pem_bundle(previous))
        except DriverError as error:
            LOG.warning(
                "amphora %s: could not reinstall certificate %s after a failed push: %s",
                endpoint.amphora_id,
                previous_cert_ref,
                error,
            )


class RevokeCertificateRecord(task.Task):
    """Mark a certificate revoked; provides its ``kind``. Revert restores its former status."""

    def __init__(self, state_store: StateStore, **kwargs: Any) -> None:
        kwargs.setdefault("name", "revoke_certificate_record")
        super().__init__(provides=("kind", "previous_status"), **kwargs)
        self.state_store = state_store

    def execute(self, serial: str) -> tuple[str, str]:
        record = self.state_store.get(CertificateRecord, serial.lower())
        if record is None:
            raise NotFound(f"no certificate with serial {serial}")
        if record.status != CertificateStatus.REVOKED:
            self.state_store.update(
                CertificateRecord,
                record.serial,
                status=CertificateStatus.REVOKED,
                revoked_at=utcnow(),
            )
        return record.kind, record.status

    def revert(self, serial: str, result: Any, **kwargs: Any) -> None:
        if isinstance(result, failure.Failure):
            return
        _kind, previous_status = result
        if previous_status != CertificateStatus.REVOKED:
            self.state_store.update(CertificateRecord, serial.lower(), status=previous_status, revoked_at=None)


class PublishCRL(task.Task):
    """Publish the CRL of the revoked certificate's CA; provides ``crl_pem``."""

    def __init__(self, cert_generator: CertGenerator, state_store: StateStore, **kwargs: Any) -> None:
        kwargs.setdefault("name", "publish_crl")
        super().__init__(provides="crl_pem", **kwargs)
        self.cert_generator = cert_generator
        self.state_store = state_store

    def execute(self, kind: str) -> str:
        return self.cert_generator.publish_crl(kind, revoked_serials(self.state_store, kind)).decode()
