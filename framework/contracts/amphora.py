"""Contract for amphora drivers: how the controller talks to agents (``keramos.amphora``)."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import Any

from keramos.framework.contracts.base import Driver


@dataclasses.dataclass(frozen=True)
class AmphoraEndpoint:
    """Where an amphora's agent answers, and who it must prove to be.

    ``proxy`` (``host:port`` of a ``keramos-proxy``) and ``network_id`` are set for an amphora
    the controller cannot route to: ``address`` is then an address inside that network, which
    other networks may reuse, and the driver reaches the agent through the proxy.
    """

    amphora_id: str
    address: str
    port: int | None = None
    proxy: str | None = None
    network_id: str | None = None

    @classmethod
    def of(cls, amphora_id: str, place: Mapping[str, Any], port_field: str = "port") -> AmphoraEndpoint:
        """The endpoint of ``amphora_id`` from a mapping holding ``address``, ``port_field`` and
        optionally ``proxy`` and ``network_id`` (an instance's or a record's fields)."""
        return cls(
            amphora_id,
            place.get("address") or "",
            place.get(port_field),
            place.get("proxy"),
            place.get("network_id"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The endpoint as flow storage keeps it (what :meth:`of` reads back)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class AmphoraCSR:
    """What the agent of an amphora that makes its own server key (csr mode) hands over.

    ``server_public_key_pem`` is not the agent's word: it is the public key (PEM
    SubjectPublicKeyInfo) that the agent's TLS connection proved to hold, so that the controller
    can check the CSR is for that key.
    """

    csr_pem: bytes
    activation_token: str
    server_public_key_pem: bytes


class AmphoraDriver(Driver):
    """Controls amphora agents: reachability, activation, configuration, certificates.

    Errors: :class:`~keramos.framework.errors.DriverError` carrying the agent's message,
    ``retryable`` for connection errors and 503s.
    """

    kind = "amphora"

    def instance_booted(self, amphora_id: str, config_drive: Mapping[str, bytes]) -> None:
        """The compute driver was handed ``config_drive`` to boot ``amphora_id``'s instance with.

        ``boot_amphora`` calls it once the compute driver's ``build`` returned; an error deletes
        the instance and reverts the boot. Drivers that talk to real agents keep the default,
        which does nothing: the agent reads the drive on its instance, and what :meth:`activate`
        and :meth:`fetch_csr` return must be the agent's answer, never what this method saw. A
        driver that simulates its agents in the controller (the noop driver, test drivers) has
        no instance to read: its simulated agent of ``amphora_id`` takes the drive from here,
        whatever compute driver booted the instance, and forgets it when the amphora is booted
        again.
        """

    @abc.abstractmethod
    def wait_until_reachable(self, endpoint: AmphoraEndpoint, timeout: float) -> dict[str, Any]:
        """Wait until the agent answers and return its ``info`` document.

        Raises :class:`~keramos.framework.errors.Timeout` after ``timeout`` seconds.
        """

    @abc.abstractmethod
    def activate(self, endpoint: AmphoraEndpoint) -> str:
        """Activate the agent and return the one-time activation token it presents.

        The agent deletes its token and accepts configuration changes from then on; a second
        activation raises :class:`~keramos.framework.errors.AlreadyActivated` (a
        ``DriverError``), and only that: ``activate_amphora`` run again after its worker died
        between the agent's answer and the redemption takes it as the earlier activation of
        the instance it asked, and any other error as a failure. The caller checks the token
        against the one on record.
        """

    @abc.abstractmethod
    def fetch_csr(self, endpoint: AmphoraEndpoint, timeout: float) -> AmphoraCSR:
        """Wait until the agent answers, then fetch its CSR and activation token (csr mode).

        The connection presents the controller's client certificate but does not verify the
        agent's self-signed bootstrap certificate against the server CA; it reports the public
        key the agent proved instead. Raises :class:`~keramos.framework.errors.Timeout` after
        ``timeout`` seconds.
        """

    @abc.abstractmethod
    def install_signed_certificate(
        self, endpoint: AmphoraEndpoint, certificate_pem: bytes, server_public_key_pem: bytes
    ) -> None:
        """Install the certificate signed from the agent's CSR (no key: the agent holds it).

        The agent still serves its bootstrap certificate, so the connection is not verified
        against the server CA: it must prove ``server_public_key_pem`` before anything is sent.
        """

    @abc.abstractmethod
    def upload_config(
        self, endpoint: AmphoraEndpoint, lb_id: str, config: str, version: int
    ) -> None:
        """Upload a load balancer configuration carrying ``version`` and make it run."""

    def upload_udp_listener_config(
        self, endpoint: AmphoraEndpoint, listener_id: str, config: str, version: int | None = None
    ) -> None:
        """Upload a UDP listener's keepalived (LVS) configuration and make it run.

        ``version`` follows the rules of :meth:`upload_config`; ``None`` is an unversioned push,
        refused once the listener had a versioned one. Not abstract, so that drivers written
        before UDP listeners existed still load: the default raises NotImplementedError.
        """
        raise NotImplementedError(f"the {type(self).__name__} amphora driver has no UDP listeners")

    @abc.abstractmethod
    def install_certificate(self, endpoint: AmphoraEndpoint, pem_bundle: bytes) -> None:
        """Replace the agent's server certificate and key (a PEM bundle)."""

    @abc.abstractmethod
    def get_info(self, endpoint: AmphoraEndpoint) -> dict[str, Any]:
        """Return the agent's ``info`` document at once (no waiting).

        ``info["loadbalancers"][lb_id]`` holds ``config_version`` (stored) and
        ``running_version`` (what HAProxy runs) for every load balancer the agent knows.
        """

    @abc.abstractmethod
    def delete_config(self, endpoint: AmphoraEndpoint, lb_id: str) -> None:
        """Stop the load balancer on the amphora and remove its configuration.

        The agent keeps the version it had, so an older push is still refused afterwards.
        Idempotent: deleting a load balancer the amphora does not have is not an error.
        """
