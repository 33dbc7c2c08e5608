"""The drivers one worker runs with, one per kind."""

from __future__ import annotations

import dataclasses

from keramos.framework.contracts import (
    AmphoraDriver,
    CertGenerator,
    CertManager,
    ComputeDriver,
    Driver,
    ImageStore,
    KeyManager,
    NetworkDriver,
    StateStore,
)


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
