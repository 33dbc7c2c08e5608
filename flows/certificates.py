"""Certificate flows: issue, rotate and revoke certificates of the controller's dual CA."""

from __future__ import annotations

from oslo_log import log as logging
from taskflow.patterns import linear_flow

from keramos.flows.tasks import certificates as tasks
from keramos.framework.contracts import CertKind, FlowFactory, PeriodicTask
from keramos.framework.contracts.flow import Cast
from keramos.framework.envelope import new_request_id
from keramos.framework.pki.options import register_opts, rotation_settings
from keramos.framework.records import TaskRecord, TaskState, utcnow
from keramos.framework.schema import IDENTIFIER_PATTERN, Field

LOG = logging.getLogger(__name__)

_SERIAL_PATTERN = r"[0-9a-fA-F]{1,40}"


class IssueCertificate(FlowFactory):
    """Issue a certificate for an amphora (server CA) or the controller (client CA).

    With ``csr_pem`` the CA signs the CSR an amphora sent, whose key never left it, after
    checking that its signature verifies and its subject is ``common_name``. The certificate
    and key are kept in the certificate manager (``cert_ref``) and recorded in the state store.
    """

    name = "issue_certificate"
    version = "1.0"
    payload = {
        "common_name": Field(str, pattern=IDENTIFIER_PATTERN, help="CN and SAN: an amphora id or a controller name"),
        "kind": Field(str, default=CertKind.SERVER, choices=CertKind.ALL, help="which CA signs"),
        "amphora_id": Field(str, default=None, help="the amphora the certificate belongs to"),
        "ip_addresses": Field(list, default=(), help="IP addresses added to the SAN"),
        "validity_days": Field(int, default=0, help="days valid (0: [certificates] default)"),
        "csr_pem": Field(str, default=None, help="a PEM CSR to sign instead of generating a key"),
    }
    resource_field = "common_name"
    result_keys = ("issued_certificate",)

    def build(self) -> linear_flow.Flow:
        return linear_flow.Flow(self.name).add(
            tasks.IssueCertificate(self.drivers.cert_generator, self.drivers.cert_manager),
            tasks.RecordCertificate(self.drivers.state_store),
        )


class RotateCertificate(FlowFactory):
    """Replace an amphora's server certificate before it expires.

    Issues a new certificate for the same identity, pushes it to the amphora through the
    amphora driver, then records it (and its expiry) and marks the old one ``superseded``. If
    any step fails, the new certificate is deleted and the old one stays installed and recorded.
    """

    name = "rotate_certificate"
    version = "1.0"
    payload = {
        "amphora_id": Field(str, pattern=IDENTIFIER_PATTERN, help="the amphora to rotate"),
        "serial": Field(
            str,
            default=None,
            pattern=_SERIAL_PATTERN,
            help="the certificate to replace (default: the amphora's active server certificate)",
        ),
        "validity_days": Field(int, default=0, help="days valid (0: [certificates] default)"),
    }
    resource_field = "amphora_id"
    result_keys = ("issued_certificate", "previous_serial")

    def periodic_tasks(self) -> list[PeriodicTask]:
        register_opts(self.conf)
        interval = self.conf.certificates.rotation_check_interval
        if interval <= 0:
            return []
        return [PeriodicTask("cast_due_rotations", interval, self.cast_due_rotations)]

    def cast_due_rotations(self, cast: Cast) -> list[str]:
        """Cast ``rotate_certificate`` for the certificates due, one batch; return request ids.

        An amphora whose rotation is already pending or running is left for the next run.
        """
        store = self.drivers.state_store
        window, batch_size = rotation_settings(self.conf)
        busy = {
            record.resource_id
            for state in (TaskState.PENDING, TaskState.PROCESSING)
            for record in store.find(TaskRecord, event=self.name, state=state)
        }
        due = tasks.certificates_due_for_rotation(store, utcnow(), window, batch_size)
        request_ids = []
        for record in due:
            if record.amphora_id in busy:
                continue
            # Recorded before the cast, so the next run skips it even if it is still queued.
            request_id = new_request_id()
            store.save(TaskRecord(request_id, self.name, resource_id=record.amphora_id))
            payload = {"amphora_id": record.amphora_id, "serial": record.serial}
            request_ids.append(cast(self.name, payload, request_id=request_id))
        if request_ids:
            LOG.info("cast %d certificate rotation(s)", len(request_ids))
        return request_ids

    def build(self) -> linear_flow.Flow:
        return linear_flow.Flow(self.name).add(
            tasks.FindCurrentCertificate(self.drivers.state_store),
            tasks.IssueCertificate(self.drivers.cert_generator, self.drivers.cert_manager),
            tasks.PushCertificate(self.drivers.amphora, self.drivers.cert_manager),
            tasks.RecordCertificate(self.drivers.state_store),
        )


class RevokeCertificate(FlowFactory):
    """Record a certificate as revoked and publish the CRL of the CA that issued it."""

    name = "revoke_certificate"
    version = "1.0"
    payload = {
        "serial": Field(str, pattern=_SERIAL_PATTERN, help="serial number, hexadecimal"),
    }
    resource_field = "serial"
    result_keys = ("kind", "crl_pem")

    def build(self) -> linear_flow.Flow:
        return linear_flow.Flow(self.name).add(
            tasks.RevokeCertificateRecord(self.drivers.state_store),
            tasks.PublishCRL(self.drivers.cert_generator, self.drivers.state_store),
        )
