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

from taskflow import task
from taskflow.types import failure

from keramos.framework.contracts import (
    AmphoraDriver,
    AmphoraEndpoint,
    CertGenerator,
    CertificateBundle,
    CertKind,
    CertManager,
    ComputeDriver,
    InstanceStatus,
    NetworkDriver,
    StateStore,
)
from keramos.framework.errors import ConfigError, DriverError, KeramosError, NotFound, Timeout
from keramos.framework.records import AmphoraRecord, AmphoraStatus, CertificateRecord
from keramos.framework.runner import jsonable

#: Amphora states from which a new creation under the same id may start.
_RECREATABLE = (AmphoraStatus.DELETED, AmphoraStatus.ERROR)

#: Config drive file holding the one-time activation token (read by the agent alone).
ACTIVATION_TOKEN_FILE = "activation_token"

#: Config drive file holding the agent's own configuration (heartbeat endpoints and key).
AGENT_CONFIG_FILE = "amphora_agent.conf"

#: A mapping of a task's argument names to the names of the values it reads instead, as
#: taskflow's ``rebind``: failover runs the creation tasks on ``replacement_id``.
Rebind = Mapping[str, str] | None


def hash_activation_token(token: str) -> str:
    """The SHA-256 hex digest of an activation token: all the controller keeps of it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def redeem_activation_token(state_store: StateStore, amphora_id: str, token: str) -> None:
    """Check a presented activation token against the amphora's stored hash and clear it.

    What an endpoint the amphora calls home to would call with the token from its config drive
    (the agent has no such call yet; ``activate_amphora`` spends the token on the controller
    side meanwhile). The comparison takes constant time. Raises :class:`KeramosError` if the amphora has no
    unused token (never booted with one, already activated, or reverted) or the token does not
    match; after a successful call the token is useless.
    """
    record = state_store.get(AmphoraRecord, amphora_id)
    stored = record.activation_token_hash if record is not None else None
    if stored is None:
        raise KeramosError(f"amphora {amphora_id} has no unused activation token")
    if not hmac.compare_digest(hash_activation_token(token), stored):
        raise KeramosError(f"activation token refused for amphora {amphora_id}")
    state_store.update(AmphoraRecord, amphora_id, activation_token_hash=None)


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
    """Record the new amphora as PENDING_CREATE; on revert, mark it ERROR with the reason."""

    def __init__(self, state_store: StateStore, *, rebind: Rebind = None) -> None:
        super().__init__(name="record_amphora", rebind=rebind)
        self.state_store = state_store

    def execute(self, amphora_id: str, image_id: str) -> None:
        existing = self.state_store.get(AmphoraRecord, amphora_id)
        if existing is not None and existing.status not in _RECREATABLE:
            raise KeramosError(f"amphora {amphora_id} already exists ({existing.status})")
        self.state_store.save(AmphoraRecord(amphora_id=amphora_id, image_id=image_id))

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
    certificate manager and never into flow storage.
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
        issued = self.cert_generator.issue(amphora_id, CertKind.SERVER)
        bundle = CertificateBundle(
            certificate=issued.certificate_pem, private_key=issued.private_key_pem
        )
        ref = self.cert_manager.store(bundle, name=f"amphora-{amphora_id}-server")
        try:
            self.state_store.save(
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
            self.cert_manager.delete(ref)
            raise
        return {"serial": issued.serial, "cert_ref": ref, "not_after": issued.not_after.isoformat()}

    def revert(self, result: Any, **kwargs: Any) -> None:
        if isinstance(result, dict):
            self.cert_manager.delete(result["cert_ref"])
            self.state_store.delete(CertificateRecord, result["serial"])


class BootAmphora(task.Task):
    """Boot the amphora's instance with its config drive: server cert and key, client CA, a
    one-time activation token and, when given, the agent's heartbeat configuration
    (``amphora_agent.conf``, see :func:`agent_heartbeat_config`).

    The token exists only in the config drive; the record keeps its SHA-256 hash until
    ``activate_amphora`` clears it. On revert the instance is deleted and the hash cleared.
    """

    def __init__(
        self,
        compute: ComputeDriver,
        cert_generator: CertGenerator,
        cert_manager: CertManager,
        state_store: StateStore,
        *,
        agent_config: bytes | None = None,
        rebind: Rebind = None,
    ) -> None:
        super().__init__(name="boot_amphora", provides="compute_id", rebind=rebind)
        self.agent_config = agent_config
        self.compute = compute
        self.cert_generator = cert_generator
        self.cert_manager = cert_manager
        self.state_store = state_store

    def execute(self, amphora_id: str, image_id: str, amphora_server_cert: dict[str, str]) -> str:
        bundle = self.cert_manager.get(amphora_server_cert["cert_ref"])
        activation_token = secrets.token_urlsafe(32)
        config_drive = {
            "amphora_id": amphora_id.encode(),
            "amphora_server_cert.pem": bundle.certificate,
            "amphora_server_key.pem": bundle.private_key or b"",
            "client_ca_cert.pem": self.cert_generator.ca_certificate(CertKind.CLIENT),
            ACTIVATION_TOKEN_FILE: activation_token.encode("ascii"),
        }
        if self.agent_config is not None:
            config_drive[AGENT_CONFIG_FILE] = self.agent_config
        self.state_store.update(
            AmphoraRecord,
            amphora_id,
            activation_token_hash=hash_activation_token(activation_token),
        )
        compute_id = self.compute.build(amphora_id, image_id, config_drive)
        try:
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
    """Plug the amphora into its network; on revert, unplug it."""

    def __init__(self, network: NetworkDriver, *, rebind: Rebind = None) -> None:
        super().__init__(name="plug_amphora_network", provides="amphora_port", rebind=rebind)
        self.network = network

    def execute(self, amphora_id: str, compute_id: str, network_id: str | None) -> dict[str, Any]:
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
        endpoint = AmphoraEndpoint(
            amphora_id, amphora_instance["address"] or "", amphora_instance["port"]
        )
        return self.amphora.wait_until_reachable(endpoint, self.timeout)


class ActivateAmphora(task.Task):
    """Activate the amphora once its agent answered: the controller activates, never the amphora.

    The agent proved its identity over mutual TLS (its server certificate names the amphora);
    the controller then spends the amphora's one-time activation token by clearing its hash, so
    that the token handed over in the config drive is useless afterwards and a second activation
    is refused. The agent has no endpoint to present the token yet, so the check is made on the
    controller side: an unused token must be on record for this amphora.
    """

    def __init__(self, state_store: StateStore, *, rebind: Rebind = None) -> None:
        super().__init__(name="activate_amphora", rebind=rebind)
        self.state_store = state_store

    def execute(self, amphora_id: str, amphora_agent_info: dict[str, Any]) -> None:
        answered_as = amphora_agent_info.get("amphora_id")
        if answered_as not in (None, amphora_id):
            raise KeramosError(f"agent of amphora {amphora_id} answered as {answered_as}")
        record = self.state_store.get(AmphoraRecord, amphora_id)
        if record is None or record.activation_token_hash is None:
            raise KeramosError(f"amphora {amphora_id} has no unused activation token")
        self.state_store.update(AmphoraRecord, amphora_id, activation_token_hash=None)


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
    """Delete the instance, port and server certificate of an amphora (each idempotently)."""

    def __init__(
        self,
        compute: ComputeDriver,
        network: NetworkDriver,
        cert_manager: CertManager,
        state_store: StateStore,
    ) -> None:
        super().__init__(name="delete_amphora_resources")
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
