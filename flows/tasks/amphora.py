"""Tasks of the amphora lifecycle flows. Each receives its drivers and undoes what it made."""

from __future__ import annotations

import configparser
import dataclasses
import hashlib
import hmac
import io
import secrets
import time
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from oslo_log import log as logging
from taskflow import task
from taskflow.types import failure

from keramos.framework.contracts import (
    AmphoraCSR,
    AmphoraDriver,
    AmphoraEndpoint,
    CertGenerator,
    CertificateBundle,
    CertKind,
    CertManager,
    ComputeDriver,
    InstanceStatus,
    IssuedCertificate,
    NetworkDriver,
    StateStore,
)
from keramos.framework.contracts.compute import ACTIVATION_TOKEN_FILE
from keramos.framework.errors import (
    AlreadyActivated,
    ConfigError,
    DriverError,
    KeramosError,
    NotFound,
    Timeout,
)
from keramos.framework.records import AmphoraRecord, AmphoraStatus, CertificateRecord, utcnow
from keramos.framework.runner import jsonable

LOG = logging.getLogger(__name__)

#: Amphora states from which a new creation under the same id may start.
_RECREATABLE = (AmphoraStatus.DELETED, AmphoraStatus.ERROR)

#: Config drive file holding the agent's own configuration (heartbeat endpoints and key).
AGENT_CONFIG_FILE = "amphora_agent.conf"

#: A mapping of a task's argument names to the names of the values it reads instead, as
#: taskflow's ``rebind``: failover runs the creation tasks on ``replacement_id``.
Rebind = Mapping[str, str] | None


def hash_activation_token(token: str) -> str:
    """The SHA-256 hex digest of an activation token: all the controller keeps of it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_activation_token(state_store: StateStore, amphora_id: str, token: str) -> None:
    """Check a token presented by an amphora's agent against the amphora's stored hash, in
    constant time, without spending it.

    Raises :class:`KeramosError` if the amphora has no unused token (never booted with one,
    already activated, or reverted) or the token does not match.
    """
    record = state_store.get(AmphoraRecord, amphora_id)
    stored = record.activation_token_hash if record is not None else None
    if stored is None:
        raise KeramosError(f"amphora {amphora_id} has no unused activation token")
    if not hmac.compare_digest(hash_activation_token(token), stored):
        raise KeramosError(f"activation token refused for amphora {amphora_id}")


def redeem_activation_token(state_store: StateStore, amphora_id: str, token: str) -> None:
    """Check the token an amphora's agent handed over at activation and clear its hash.

    ``activate_amphora`` calls it with what the agent answered to ``activate``: the check is
    :func:`check_activation_token`'s; after a successful call the token is useless.
    """
    check_activation_token(state_store, amphora_id, token)
    state_store.update(AmphoraRecord, amphora_id, activation_token_hash=None, activated_at=utcnow())


def _endpoint(amphora_id: str, amphora_instance: Mapping[str, Any]) -> AmphoraEndpoint:
    return AmphoraEndpoint.of(amphora_id, amphora_instance)


def _server_bundle_name(amphora_id: str) -> str:
    return f"amphora-{amphora_id}-server"


def _store_server_certificate(
    cert_manager: CertManager, state_store: StateStore, amphora_id: str, issued: IssuedCertificate
) -> dict[str, str]:
    """Keep an amphora's server certificate (and key, if the controller made it) in the
    certificate manager and record it; returns ``{"serial", "cert_ref", "not_after"}``."""
    bundle = CertificateBundle(certificate=issued.certificate_pem, private_key=issued.private_key_pem)
    ref = cert_manager.store(bundle, name=_server_bundle_name(amphora_id))
    try:
        state_store.save(
            CertificateRecord(
                serial=issued.serial,
                kind=issued.kind,
                subject=issued.subject,
                not_after=issued.not_after,
                amphora_id=amphora_id,
                cert_ref=ref,
            )
        )
    except Exception:
        cert_manager.delete(ref)
        raise
    return {"serial": issued.serial, "cert_ref": ref, "not_after": issued.not_after.isoformat()}


def _delete_earlier_server_certificates(
    cert_manager: CertManager, state_store: StateStore, amphora_id: str
) -> None:
    """Delete the server certificates of an amphora being created that an earlier attempt of
    the same task made before its worker died, so that the flow never learnt of them: those the
    state store recorded, and those the certificate manager stored before they were recorded
    (found by name, where the manager can look them up)."""
    for certificate in state_store.find(CertificateRecord, amphora_id=amphora_id):
        if certificate.kind != CertKind.SERVER:
            continue
        LOG.info("deleting server certificate %s of an earlier attempt", certificate.serial)
        if certificate.cert_ref:
            cert_manager.delete(certificate.cert_ref)
        state_store.delete(CertificateRecord, certificate.serial)
    for ref in cert_manager.find(_server_bundle_name(amphora_id)):
        LOG.info("deleting certificate bundle %s of an earlier attempt, stored but not recorded", ref)
        cert_manager.delete(ref)


def _delete_server_certificate(
    cert_manager: CertManager, state_store: StateStore, stored: dict[str, str]
) -> None:
    cert_manager.delete(stored["cert_ref"])
    state_store.delete(CertificateRecord, stored["serial"])


def _public_key_der(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def csr_matches_key(csr_pem: bytes, public_key_pem: bytes) -> bool:
    """Whether the CSR asks for a certificate of that public key (PEM SubjectPublicKeyInfo).

    Raises :class:`KeramosError` when either does not parse.
    """
    try:
        csr_key = x509.load_pem_x509_csr(csr_pem).public_key()
        key = serialization.load_pem_public_key(public_key_pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise KeramosError(f"malformed CSR or server key: {error}") from None
    return hmac.compare_digest(_public_key_der(csr_key), _public_key_der(key))


def agent_heartbeat_config(endpoints: list[str], interval: float, heartbeat_key: str | None) -> bytes | None:
    """The ``[amphora_agent]`` section telling a new amphora's agent where to send its signed
    heartbeats, for its config drive; None when no health manager endpoint is configured.

    Raises :class:`ConfigError` when endpoints are given without the key that signs heartbeats.
    """
    if not endpoints:
        return None
    if not heartbeat_key:
        raise ConfigError(
            "[amphora] controller_heartbeat_endpoints is set but [health] heartbeat_key is not: "
            "amphorae could not sign their heartbeats"
        )
    parser = configparser.ConfigParser(interpolation=None)
    parser["amphora_agent"] = {
        "controller_heartbeat_endpoints": ", ".join(endpoints),
        "heartbeat_interval": repr(float(interval)),
        "heartbeat_key": heartbeat_key,
    }
    text = io.StringIO()
    parser.write(text)
    return text.getvalue().encode("utf-8")


def failure_reason(flow_failures: dict[str, failure.Failure] | None) -> str:
    """One line saying why a flow is reverting, for the record of what it touched."""
    for name, fail in (flow_failures or {}).items():
        return f"{name}: {fail.exception_str}"
    return "reverted"


class RecordAmphora(task.Task):
    """Record the new amphora as PENDING_CREATE; on revert, mark it ERROR with the reason.

    The record keeps the ``request_id`` of the cast that created it: a record in PENDING_CREATE
    of the same request is this task's own, saved before a worker died, and is accepted.
    """

    def __init__(self, state_store: StateStore, *, rebind: Rebind = None) -> None:
        super().__init__(name="record_amphora", rebind=rebind)
        self.state_store = state_store

    def execute(self, amphora_id: str, image_id: str, request_id: str | None = None) -> None:
        existing = self.state_store.get(AmphoraRecord, amphora_id)
        if existing is not None and existing.status not in _RECREATABLE:
            ours = (
                request_id is not None
                and existing.request_id == request_id
                and existing.status == AmphoraStatus.PENDING_CREATE
                and existing.image_id == image_id
            )
            if ours:
                return
            raise KeramosError(f"amphora {amphora_id} already exists ({existing.status})")
        self.state_store.save(
            AmphoraRecord(amphora_id=amphora_id, image_id=image_id, request_id=request_id)
        )

    def revert(self, amphora_id: str, result: Any, flow_failures=None, **kwargs: Any) -> None:
        if isinstance(result, failure.Failure):
            return
        self.state_store.update(
            AmphoraRecord,
            amphora_id,
            status=AmphoraStatus.ERROR,
            error=failure_reason(flow_failures),
        )


class IssueAmphoraServerCert(task.Task):
    """Issue the amphora's server certificate (server CA), keep it in the certificate manager.

    Provides ``{"serial", "cert_ref", "not_after"}``: the private key goes straight to the
    certificate manager and never into flow storage. Server certificates already recorded for
    the amphora (an earlier attempt's, run again after a worker died) are deleted first.
    """

    def __init__(
        self,
        cert_generator: CertGenerator,
        cert_manager: CertManager,
        state_store: StateStore,
        *,
        rebind: Rebind = None,
    ) -> None:
        super().__init__(
            name="issue_amphora_server_cert", provides="amphora_server_cert", rebind=rebind
        )
        self.cert_generator = cert_generator
        self.cert_manager = cert_manager
        self.state_store = state_store

    def execute(self, amphora_id: str) -> dict[str, str]:
        _delete_earlier_server_certificates(self.cert_manager, self.state_store, amphora_id)
        issued = self.cert_generator.issue(amphora_id, CertKind.SERVER)
        return _store_server_certificate(self.cert_manager, self.state_store, amphora_id, issued)

    def revert(self, result: Any, **kwargs: Any) -> None:
        if isinstance(result, dict):
            _delete_server_certificate(self.cert_manager, self.state_store, result)


class SignAmphoraCSR(task.Task):
    """csr mode: sign the CSR of the server key the amphora made itself, and install the
    certificate on its agent. Runs after boot, before ``wait_for_amphora_agent``.

    The agent still serves a self-signed bootstrap certificate, which the amphora driver does not
    verify against the server CA. It is trusted instead because (a) it presents the amphora's
    unused activation token, checked in constant time against the stored hash and not spent
    (``activate_amphora`` spends it), and (b) its CSR is for the key its TLS connection proved.
    The certificate is signed by the server CA for the amphora id, kept in the certificate
    manager without a key (the key never leaves the amphora) and recorded as
    ``issue_amphora_server_cert`` does, after deleting an earlier attempt's. Provides the same
    ``amphora_server_cert``.
    """

    def __init__(
        self,
        amphora: AmphoraDriver,
        cert_generator: CertGenerator,
        cert_manager: CertManager,
        state_store: StateStore,
        *,
        timeout: float,
        rebind: Rebind = None,
    ) -> None:
        super().__init__(name="sign_amphora_csr", provides="amphora_server_cert", rebind=rebind)
        self.amphora = amphora
        self.cert_generator = cert_generator
        self.cert_manager = cert_manager
        self.state_store = state_store
        self.timeout = timeout

    def execute(self, amphora_id: str, amphora_instance: dict[str, Any]) -> dict[str, str]:
        endpoint = _endpoint(amphora_id, amphora_instance)
        request: AmphoraCSR = self.amphora.fetch_csr(endpoint, self.timeout)
        check_activation_token(self.state_store, amphora_id, request.activation_token)
        if not csr_matches_key(request.csr_pem, request.server_public_key_pem):
            raise KeramosError(
                f"the CSR of amphora {amphora_id} is not for the key its agent proved over TLS"
            )
        _delete_earlier_server_certificates(self.cert_manager, self.state_store, amphora_id)
        issued = self.cert_generator.sign_csr(
            request.csr_pem, CertKind.SERVER, expected_common_name=amphora_id
        )
        stored = _store_server_certificate(self.cert_manager, self.state_store, amphora_id, issued)
        try:
            self.amphora.install_signed_certificate(
                endpoint, issued.certificate_pem, request.server_public_key_pem
            )
        except Exception:
            # The result never reaches flow storage, so revert could not find the certificate.
            _delete_server_certificate(self.cert_manager, self.state_store, stored)
            raise
        return stored

    def revert(self, result: Any, **kwargs: Any) -> None:
        if isinstance(result, dict):
            _delete_server_certificate(self.cert_manager, self.state_store, result)


class BootAmphora(task.Task):
    """Boot the amphora's instance with its config drive: server cert and key, client CA, a
    one-time activation token and, when given, the agent's heartbeat configuration
    (``amphora_agent.conf``, see :func:`agent_heartbeat_config`).

    With ``amphora_makes_server_key`` (csr mode) the drive carries no server certificate nor key:
    the agent makes its own, and ``sign_amphora_csr`` certifies it after the boot.

    The token exists only in the config drive (which the amphora driver is told of, for agents it
    simulates: :meth:`AmphoraDriver.instance_booted`); the record keeps its SHA-256 hash until
    ``activate_amphora`` clears it. On revert the instance is deleted and the hash cleared.

    Run again after a worker died inside it, it first deletes the instances an earlier attempt
    built (:meth:`ComputeDriver.find`): their tokens are lost, so they could never activate.
    """

    def __init__(
        self,
        compute: ComputeDriver,
        cert_generator: CertGenerator,
        cert_manager: CertManager,
        state_store: StateStore,
        *,
        amphora: AmphoraDriver,
        agent_config: bytes | None = None,
        amphora_makes_server_key: bool = False,
        rebind: Rebind = None,
    ) -> None:
        # In csr mode no task before the boot provides the server certificate.
        inject = {"amphora_server_cert": None} if amphora_makes_server_key else None
        super().__init__(name="boot_amphora", provides="compute_id", rebind=rebind, inject=inject)
        self.agent_config = agent_config
        self.compute = compute
        self.amphora = amphora
        self.cert_generator = cert_generator
        self.cert_manager = cert_manager
        self.state_store = state_store

    def execute(
        self,
        amphora_id: str,
        image_id: str,
        amphora_server_cert: dict[str, str] | None,
        network_id: str | None = None,
    ) -> str:
        activation_token = secrets.token_urlsafe(32)
        config_drive = {
            "amphora_id": amphora_id.encode(),
            "client_ca_cert.pem": self.cert_generator.ca_certificate(CertKind.CLIENT),
            ACTIVATION_TOKEN_FILE: activation_token.encode("ascii"),
        }
        if amphora_server_cert is not None:
            bundle = self.cert_manager.get(amphora_server_cert["cert_ref"])
            config_drive["amphora_server_cert.pem"] = bundle.certificate
            config_drive["amphora_server_key.pem"] = bundle.private_key or b""
        if self.agent_config is not None:
            config_drive[AGENT_CONFIG_FILE] = self.agent_config
        for earlier in self.compute.find(amphora_id):
            LOG.info("deleting instance %s of amphora %s of an earlier attempt", earlier, amphora_id)
            self.compute.delete(earlier)
        self.state_store.update(
            AmphoraRecord,
            amphora_id,
            activation_token_hash=hash_activation_token(activation_token),
            activated_at=None,
            activation_requested_at=None,
        )
        # Only when asked for, so that compute drivers written before network_id still load.
        placement = {"network_id": network_id} if network_id is not None else {}
        compute_id = self.compute.build(amphora_id, image_id, config_drive, **placement)
        try:
            self.amphora.instance_booted(amphora_id, config_drive)
            self.state_store.update(
                AmphoraRecord, amphora_id, status=AmphoraStatus.BOOTING, compute_id=compute_id
            )
        except Exception:
            # The result never reaches flow storage, so revert could not find the instance.
            self.compute.delete(compute_id)
            raise
        return compute_id

    def revert(self, amphora_id: str, result: Any, **kwargs: Any) -> None:
        changes: dict[str, Any] = {"activation_token_hash": None}
        if isinstance(result, str):
            self.compute.delete(result)
            changes["compute_id"] = None
        self.state_store.update(AmphoraRecord, amphora_id, **changes)


class WaitForAmphoraActive(task.Task):
    """Poll the compute driver, backing off, until the instance is ACTIVE."""

    def __init__(self, compute: ComputeDriver, *, timeout: float, interval: float) -> None:
        super().__init__(name="wait_for_amphora_active", provides="amphora_instance")
        self.compute = compute
        self.timeout = timeout
        self.interval = interval

    def execute(self, compute_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        interval = self.interval
        while True:
            instance = self.compute.get(compute_id)
            if instance.status == InstanceStatus.ACTIVE:
                return dataclasses.asdict(instance)
            if instance.status in (InstanceStatus.ERROR, InstanceStatus.DELETED):
                raise DriverError(
                    f"instance {compute_id} is {instance.status}: {instance.fault or 'no fault given'}"
                )
            if time.monotonic() + interval > deadline:
                raise Timeout(f"instance {compute_id} not ACTIVE after {self.timeout:g}s")
            time.sleep(interval)
            interval = min(interval * 2, 5.0)


class PlugAmphoraNetwork(task.Task):
    """Plug the amphora into its network; on revert, unplug it.

    Run again after a worker died once the port was plugged, it first unplugs the ports the
    network driver finds for the amphora (:meth:`NetworkDriver.find`): the amphora being created
    has no other.
    """

    def __init__(self, network: NetworkDriver, *, rebind: Rebind = None) -> None:
        super().__init__(name="plug_amphora_network", provides="amphora_port", rebind=rebind)
        self.network = network

    def execute(self, amphora_id: str, compute_id: str, network_id: str | None) -> dict[str, Any]:
        for earlier in self.network.find(amphora_id):
            LOG.info("unplugging port %s of amphora %s of an earlier attempt", earlier.port_id, amphora_id)
            self.network.unplug(earlier.port_id)
        return dataclasses.asdict(self.network.plug(amphora_id, compute_id, network_id))

    def revert(self, result: Any, **kwargs: Any) -> None:
        if isinstance(result, dict):
            self.network.unplug(result["port_id"])


class WaitForAmphoraAgent(task.Task):
    """Wait until the amphora's agent answers the controller over mutual TLS."""

    def __init__(self, amphora: AmphoraDriver, *, timeout: float, rebind: Rebind = None) -> None:
        super().__init__(name="wait_for_amphora_agent", provides="amphora_agent_info", rebind=rebind)
        self.amphora = amphora
        self.timeout = timeout

    def execute(self, amphora_id: str, amphora_instance: dict[str, Any]) -> dict[str, Any]:
        return self.amphora.wait_until_reachable(_endpoint(amphora_id, amphora_instance), self.timeout)


class ActivateAmphora(task.Task):
    """Activate the amphora once its agent answered: the controller activates, never the amphora.

    The agent proved its identity over mutual TLS (its server certificate, from the server CA,
    names the amphora). The controller asks it to activate: the agent hands over the one-time
    token of its config drive, deletes it and accepts configuration changes from then on. The
    token is checked in constant time against the stored hash, which is cleared
    (:func:`redeem_activation_token`): the token is useless afterwards and a second activation
    is refused by both sides. A wrong token fails the flow, which deletes the amphora.

    Run again after a worker died once the token was redeemed, it finds the record activated
    (``activated_at``) for the same instance and has nothing left to do. The record notes when
    activation was asked of the instance (``activation_requested_at``): run again after a worker
    died between the agent's answer and the redemption, a refusal by the agent that already
    handed its token to this controller (:class:`AlreadyActivated`, as the contract says of a
    second activation, and no other error) is taken as that earlier activation, and the hash
    is cleared.
    """

    def __init__(self, amphora: AmphoraDriver, state_store: StateStore, *, rebind: Rebind = None) -> None:
        super().__init__(name="activate_amphora", rebind=rebind)
        self.amphora = amphora
        self.state_store = state_store

    def execute(
        self,
        amphora_id: str,
        amphora_instance: dict[str, Any],
        amphora_agent_info: dict[str, Any],
        compute_id: str | None = None,
    ) -> None:
        answered_as = amphora_agent_info.get("amphora_id")
        if answered_as not in (None, amphora_id):
            raise KeramosError(f"agent of amphora {amphora_id} answered as {answered_as}")
        record = self.state_store.get(AmphoraRecord, amphora_id)
        already_activated = (
            record is not None
            and record.activation_token_hash is None
            and record.activated_at is not None
            and compute_id is not None
            and record.compute_id == compute_id
        )
        if already_activated:
            return
        if record is None or record.activation_token_hash is None:
            raise KeramosError(f"amphora {amphora_id} has no unused activation token")
        asked_before = (
            record.activation_requested_at is not None
            and compute_id is not None
            and record.compute_id == compute_id
        )
        self.state_store.update(AmphoraRecord, amphora_id, activation_requested_at=utcnow())
        try:
            token = self.amphora.activate(_endpoint(amphora_id, amphora_instance))
        except AlreadyActivated as error:
            if not asked_before:
                raise
            LOG.warning(
                "amphora %s was activated by an earlier attempt, its token lost: %s", amphora_id, error
            )
            self.state_store.update(
                AmphoraRecord, amphora_id, activation_token_hash=None, activated_at=utcnow()
            )
            return
        redeem_activation_token(self.state_store, amphora_id, token)


class MarkAmphoraReady(task.Task):
    """Record where the amphora runs and mark it READY."""

    def __init__(self, state_store: StateStore, *, rebind: Rebind = None) -> None:
        super().__init__(name="mark_amphora_ready", provides="amphora", rebind=rebind)
        self.state_store = state_store

    def execute(
        self,
        amphora_id: str,
        compute_id: str,
        amphora_instance: dict[str, Any],
        amphora_port: dict[str, Any],
        amphora_server_cert: dict[str, str],
    ) -> dict[str, Any]:
        record = self.state_store.update(
            AmphoraRecord,
            amphora_id,
            status=AmphoraStatus.READY,
            compute_id=compute_id,
            address=amphora_instance["address"],
            agent_port=amphora_instance["port"],
            proxy=amphora_instance.get("proxy"),
            network_id=amphora_instance.get("network_id"),
            port_id=amphora_port["port_id"],
            cert_serial=amphora_server_cert["serial"],
            error=None,
        )
        return jsonable(record.to_dict())


class LoadAmphora(task.Task):
    """Fetch the amphora's record and mark it PENDING_DELETE."""

    def __init__(self, state_store: StateStore) -> None:
        super().__init__(name="load_amphora", provides="amphora")
        self.state_store = state_store

    def execute(self, amphora_id: str) -> dict[str, Any]:
        record = self.state_store.get(AmphoraRecord, amphora_id)
        if record is None or record.status == AmphoraStatus.DELETED:
            raise NotFound(f"no amphora {amphora_id}")
        self.state_store.update(AmphoraRecord, amphora_id, status=AmphoraStatus.PENDING_DELETE)
        return jsonable(record.to_dict())

    def revert(self, amphora_id: str, result: Any, flow_failures=None, **kwargs: Any) -> None:
        if isinstance(result, dict):
            self.state_store.update(
                AmphoraRecord,
                amphora_id,
                status=AmphoraStatus.ERROR,
                error=f"delete failed: {failure_reason(flow_failures)}",
            )


class DeleteAmphoraResources(task.Task):
    """Delete the instance, port and server certificate of an amphora (each idempotently).

    It reads the amphora's record under ``amphora``; failover rebinds it to ``failed_amphora``.
    Deleted resources cannot come back: on revert (a later task failed) the record forgets them
    and the amphora is left ERROR, so that neither a retried delete nor a failover looks for them.
    """

    def __init__(
        self,
        compute: ComputeDriver,
        network: NetworkDriver,
        cert_manager: CertManager,
        state_store: StateStore,
        *,
        rebind: Rebind = None,
    ) -> None:
        super().__init__(name="delete_amphora_resources", rebind=rebind)
        self.compute = compute
        self.network = network
        self.cert_manager = cert_manager
        self.state_store = state_store

    def execute(self, amphora: dict[str, Any]) -> None:
        if amphora["compute_id"]:
            self.compute.delete(amphora["compute_id"])
        if amphora["port_id"]:
            self.network.unplug(amphora["port_id"])
        for certificate in self.state_store.find(CertificateRecord, amphora_id=amphora["amphora_id"]):
            if certificate.cert_ref:
                self.cert_manager.delete(certificate.cert_ref)
            self.state_store.delete(CertificateRecord, certificate.serial)

    def revert(self, amphora: dict[str, Any], result: Any, flow_failures=None, **kwargs: Any) -> None:
        if isinstance(result, failure.Failure):
            return
        self.state_store.update(
            AmphoraRecord,
            amphora["amphora_id"],
            status=AmphoraStatus.ERROR,
            compute_id=None,
            port_id=None,
            cert_serial=None,
            error=f"resources deleted, then {failure_reason(flow_failures)}",
        )


class MarkAmphoraDeleted(task.Task):
    """Mark the amphora DELETED, clearing what pointed to deleted resources."""

    def __init__(self, state_store: StateStore) -> None:
        super().__init__(name="mark_amphora_deleted")
        self.state_store = state_store

    def execute(self, amphora_id: str) -> None:
        self.state_store.update(
            AmphoraRecord,
            amphora_id,
            status=AmphoraStatus.DELETED,
            compute_id=None,
            port_id=None,
            cert_serial=None,
            activation_token_hash=None,
        )
