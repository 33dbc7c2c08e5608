"""Driver contracts: one abstract base class per driver kind, and the flow contract.

Plugin authors subclass one of these and register the class under the entry-point group
``keramos.<kind>`` of their distribution. Keramos checks at start-up that the class implements
its contract, and refuses to start, naming the entry point, if it does not.
"""

from keramos.framework.contracts.amphora import AmphoraCSR, AmphoraDriver, AmphoraEndpoint
from keramos.framework.contracts.base import Driver
from keramos.framework.contracts.cert_generator import CertGenerator, CertKind, IssuedCertificate
from keramos.framework.contracts.cert_manager import CertificateBundle, CertManager
from keramos.framework.contracts.compute import ComputeDriver, Instance, InstanceStatus
from keramos.framework.contracts.drivers import Drivers
from keramos.framework.contracts.flow import FlowFactory, PeriodicTask
from keramos.framework.contracts.image_store import ImageStore
from keramos.framework.contracts.key_manager import KeyManager
from keramos.framework.contracts.network import NetworkDriver, Port
from keramos.framework.contracts.state_store import StateStore

#: Driver kind -> contract, in the order the worker loads them.
DRIVER_CONTRACTS: dict[str, type[Driver]] = {
    contract.kind: contract
    for contract in (
        StateStore,
        ComputeDriver,
        NetworkDriver,
        CertGenerator,
        CertManager,
        KeyManager,
        ImageStore,
        AmphoraDriver,
    )
}

__all__ = [
    "DRIVER_CONTRACTS",
    "AmphoraCSR",
    "AmphoraDriver",
    "AmphoraEndpoint",
    "CertGenerator",
    "CertKind",
    "CertManager",
    "CertificateBundle",
    "ComputeDriver",
    "Driver",
    "Drivers",
    "FlowFactory",
    "ImageStore",
    "Instance",
    "InstanceStatus",
    "IssuedCertificate",
    "KeyManager",
    "NetworkDriver",
    "PeriodicTask",
    "Port",
    "StateStore",
]
