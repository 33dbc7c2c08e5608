"""Contract for compute drivers: where amphorae run (``keramos.compute``)."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping

from keramos.framework.contracts.base import Driver

#: Config drive file holding an amphora's one-time activation token: the agent hands it to the
#: controller that activates it, then deletes it (so a compute driver hands it over writable).
ACTIVATION_TOKEN_FILE = "activation_token"


class InstanceStatus:
    """What a compute driver reports about an instance."""

    BUILDING = "BUILDING"
    ACTIVE = "ACTIVE"
    ERROR = "ERROR"
    DELETED = "DELETED"


@dataclasses.dataclass(frozen=True)
class Instance:
    """An instance as the compute driver sees it.

    ``address`` and ``port`` are where the amphora agent listens once the instance is ACTIVE
    (``port`` may be ``None`` when the agent uses the default). ``proxy`` (``host:port`` of a
    ``keramos-proxy``) and ``network_id`` are set when the controller cannot route to
    ``address``: it reaches the agent through that proxy, inside that network.
    """

    compute_id: str
    status: str
    address: str | None = None
    port: int | None = None
    fault: str | None = None
    proxy: str | None = None
    network_id: str | None = None


class ComputeDriver(Driver):
    """Boots, inspects and deletes the instances amphorae run in.

    Every method may raise :class:`keramos.framework.errors.DriverError` (with
    ``retryable=True`` when trying again may help).
    """

    kind = "compute"

    @abc.abstractmethod
    def build(
        self,
        amphora_id: str,
        image_id: str,
        config_drive: Mapping[str, bytes],
        *,
        flavor: str | None = None,
        network_id: str | None = None,
    ) -> str:
        """Start booting an instance for ``amphora_id`` and return its compute id.

        ``network_id`` is the network the amphora serves, passed only when the create asked for
        one (drivers written before it existed still load); a driver that places instances by
        network reports the route in :meth:`get` (``Instance.proxy`` and ``network_id``).

        ``config_drive`` maps file names to their contents (server certificate and key, unless
        the amphora makes its own; client CA, agent configuration, :data:`ACTIVATION_TOKEN_FILE`);
        the driver must hand them to the instance readable by the agent alone for keys
        (``*.key``, ``*key.pem``) and the token, which the agent deletes once activated.
        Must not wait for the instance to be active. Undone by :meth:`delete`.
        """

    @abc.abstractmethod
    def get(self, compute_id: str) -> Instance:
        """Return the instance's current status and address.

        Raises :class:`keramos.framework.errors.NotFound` if there is no such instance.
        """

    @abc.abstractmethod
    def delete(self, compute_id: str) -> None:
        """Delete the instance and everything the driver made for it.

        Idempotent: deleting an instance that does not exist (any more) is not an error.
        """

    def find(self, amphora_id: str) -> list[str]:
        """Return the compute ids of the live instances built for ``amphora_id``.

        Optional: a resumed ``boot_amphora`` asks it for the instances an earlier attempt built
        before the worker died, and deletes them before it builds again. The default finds
        nothing, so a driver that cannot look instances up may leave such an instance behind.
        """
        return []
