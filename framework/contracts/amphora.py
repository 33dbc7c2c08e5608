"""Contract for amphora drivers: how the controller talks to agents (``keramos.amphora``)."""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

from keramos.framework.contracts.base import Driver


@dataclasses.dataclass(frozen=True)
class AmphoraEndpoint:
    """Where an amphora's agent answers, and who it must prove to be."""

    amphora_id: str
    address: str
    port: int | None = None


class AmphoraDriver(Driver):
    """Controls amphora agents: reachability, configuration, certificates.

    Errors: :class:`~keramos.framework.errors.DriverError` carrying the agent's message,
    ``retryable`` for connection errors and 503s.
    """

    kind = "amphora"

    @abc.abstractmethod
    def wait_until_reachable(self, endpoint: AmphoraEndpoint, timeout: float) -> dict[str, Any]:
        """Wait until the agent answers and return its ``info`` document.

        Raises :class:`~keramos.framework.errors.Timeout` after ``timeout`` seconds.
        """

    @abc.abstractmethod
    def upload_config(
        self, endpoint: AmphoraEndpoint, lb_id: str, config: str, version: int
    ) -> None:
        """Upload a load balancer configuration carrying ``version`` and make it run."""

    @abc.abstractmethod
    def install_certificate(self, endpoint: AmphoraEndpoint, pem_bundle: bytes) -> None:
        """Replace the agent's server certificate and key (a PEM bundle)."""
