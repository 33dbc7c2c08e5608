"""Contract for network drivers: how amphorae are plugged (``keramos.network``)."""

from __future__ import annotations

import abc
import dataclasses

from keramos.framework.contracts.base import Driver


@dataclasses.dataclass(frozen=True)
class Port:
    """A port plugged into an amphora's instance."""

    port_id: str
    network_id: str | None
    ip_address: str | None


class NetworkDriver(Driver):
    """Plugs amphorae into the networks they serve."""

    kind = "network"

    @abc.abstractmethod
    def plug(self, amphora_id: str, compute_id: str, network_id: str | None = None) -> Port:
        """Create a port on ``network_id`` (the driver's default if ``None``) and attach it.

        Undone by :meth:`unplug`.
        """

    @abc.abstractmethod
    def unplug(self, port_id: str) -> None:
        """Detach and delete the port. Idempotent: an unknown port is not an error."""

    def find(self, amphora_id: str) -> list[Port]:
        """Return the ports plugged for ``amphora_id``.

        Optional: a resumed ``plug_amphora_network`` asks it for the port an earlier attempt
        plugged before its worker died, and unplugs it before it plugs again. The default finds
        nothing, so a driver that cannot look ports up may leave such a port behind.
        """
        return []
