"""The drivers one worker runs with, one per kind: what a flow factory receives."""

from __future__ import annotations

import dataclasses

from keramos.framework.contracts.amphora import AmphoraDriver
from keramos.framework.contracts.base import Driver
from keramos.framework.contracts.cert_generator import CertGenerator
from keramos.framework.contracts.cert_manager import CertManager
from keramos.framework.contracts.compute import ComputeDriver
from keramos.framework.contracts.image_store import ImageStore
from keramos.framework.contracts.key_manager import KeyManager
from keramos.framework.contracts.network import NetworkDriver
from keramos.framework.contracts.state_store import StateStore


@dataclasses.dataclass(frozen=True)
class Drivers:
    """One loaded driver per kind, handed to flow factories and from them to tasks."""

    state_store: StateStore
    compute: ComputeDriver
    network: NetworkDriver
    cert_generator: CertGenerator
    cert_manager: CertManager
    key_manager: KeyManager
    image_store: ImageStore
    amphora: AmphoraDriver

    def replace(self, **drivers: Driver) -> Drivers:
        """Return a copy with some drivers swapped (tests swap in one real driver this way)."""
        return dataclasses.replace(self, **drivers)

    def close(self) -> None:
        """Close every driver, the state store last."""
        for field in reversed(dataclasses.fields(self)):
            getattr(self, field.name).close()
