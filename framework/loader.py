"""Loading drivers and flows from entry points, checked against their contracts at start-up.

Every failure becomes one :class:`~keramos.framework.errors.PluginLoadError` line naming the
group, the entry point and the cause, raised before the worker consumes anything.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Iterable
from importlib import metadata

from oslo_config import cfg
from oslo_log import log as logging
from stevedore import driver as sv_driver
from stevedore import exception as sv_exception
from stevedore import extension as sv_extension

from keramos.framework.contracts import DRIVER_CONTRACTS, Driver, Drivers, FlowFactory, StateStore
from keramos.framework.errors import PluginLoadError
from keramos.framework.schema import Field

LOG = logging.getLogger(__name__)

FLOWS_GROUP = "keramos.flows"
#: The separate programs (health manager, proxy) as classes a process can run in itself.
PROGRAMS_GROUP = "keramos.programs"
_VERSION_RE = re.compile(r"\d+\.\d+")


def group_of(kind: str) -> str:
    """The entry-point group of a driver kind: ``keramos.<kind>``."""
    return f"keramos.{kind}"


#: Every entry-point group Keramos reads, drivers first, flows last.
GROUPS: tuple[str, ...] = (*(group_of(kind) for kind in DRIVER_CONTRACTS), FLOWS_GROUP)


def _raise_load_failure(_manager: object, entry_point: metadata.EntryPoint, error: Exception):
    raise PluginLoadError(
        entry_point.group, entry_point.name, f"cannot import {entry_point.value}: {error}"
    ) from error


def _check_class(group: str, name: str, plugin: object, contract: type) -> None:
    if not (inspect.isclass(plugin) and issubclass(plugin, contract)):
        raise PluginLoadError(
            group,
            name,
            f"{plugin!r} is not a subclass of {contract.__module__}.{contract.__qualname__}",
        )
    missing = sorted(getattr(plugin, "__abstractmethods__", ()))
    if missing:
        raise PluginLoadError(
            group,
            name,
            f"{plugin.__qualname__} does not implement {contract.__qualname__}: "
            f"missing {', '.join(missing)}",
        )


def _import_entry_point(group: str, name: str) -> object:
    try:
        manager = sv_driver.DriverManager(
            group, name, invoke_on_load=False, on_load_failure_callback=_raise_load_failure
        )
    except sv_exception.NoMatches:
        available = ", ".join(sorted(ep.name for ep in metadata.entry_points(group=group)))
        raise PluginLoadError(
            group, name, f"no such entry point is installed (installed: {available or 'none'})"
        ) from None
    return manager.driver


def load_driver_class(kind: str, name: str) -> type[Driver]:
    """Import the driver class registered as ``name`` in ``keramos.<kind>`` and check it."""
    if kind not in DRIVER_CONTRACTS:
        raise PluginLoadError(group_of(kind), name, f"unknown driver kind {kind!r}")
    group = group_of(kind)
    plugin = _import_entry_point(group, name)
    _check_class(group, name, plugin, DRIVER_CONTRACTS[kind])
    return plugin


def load_driver(kind: str, name: str, conf: cfg.ConfigOpts) -> Driver:
    """Load, check and build one driver; any failure names the entry point."""
    plugin = load_driver_class(kind, name)
    try:
        instance = plugin(conf)
    except PluginLoadError:
        raise
    except Exception as error:
        raise PluginLoadError(
            group_of(kind), name, f"{plugin.__qualname__}(conf) failed: {error}"
        ) from error
    LOG.debug("loaded %s driver %s (%s)", kind, name, plugin.__qualname__)
    return instance


def load_program(name: str) -> type:
    """The class of the program registered as ``name`` in ``keramos.programs``, for a process
    that runs it in itself (the demo runs the health manager beside its worker)."""
    program = _import_entry_point(PROGRAMS_GROUP, name)
    if not isinstance(program, type):
        raise PluginLoadError(PROGRAMS_GROUP, name, f"{program!r} is not a class")
    return program


def load_state_store(conf: cfg.ConfigOpts) -> StateStore:
    """The state store ``[drivers] state_store`` names, for processes that need no other driver
    (the health manager, CLI commands reading records)."""
    return load_driver("state_store", conf.drivers.state_store, conf)


def load_drivers(conf: cfg.ConfigOpts, **given: Driver) -> Drivers:
    """Build the drivers named in ``[drivers]``; ``given`` drivers are used as they are.

    If one driver fails to load, those already built are closed before the error propagates.
    """
    built: dict[str, Driver] = {}
    try:
        for kind, contract in DRIVER_CONTRACTS.items():
            if kind in given:
                if not isinstance(given[kind], contract):
                    wrong = type(given[kind])
                    raise TypeError(
                        f"the {kind} driver given is a {wrong.__module__}.{wrong.__qualname__}, "
                        f"not a {contract.__module__}.{contract.__qualname__}"
                    )
                built[kind] = given[kind]
            else:
                built[kind] = load_driver(kind, getattr(conf.drivers, kind), conf)
    except Exception:
        for kind, driver in built.items():
            if kind not in given:
                driver.close()
        raise
    return Drivers(**built)


def _check_flow(name: str, plugin: type[FlowFactory]) -> None:
    _check_class(FLOWS_GROUP, name, plugin, FlowFactory)
    declared = getattr(plugin, "name", None)
    if declared != name:
        raise PluginLoadError(
            FLOWS_GROUP, name, f"{plugin.__qualname__}.name is {declared!r}, not {name!r}"
        )
    if not _VERSION_RE.fullmatch(str(plugin.version)):
        raise PluginLoadError(
            FLOWS_GROUP, name, f"version {plugin.version!r} is not MAJOR.MINOR"
        )
    for field_name, field in plugin.payload.items():
        if not isinstance(field, Field):
            raise PluginLoadError(
                FLOWS_GROUP, name, f"payload field {field_name!r} is not a schema.Field"
            )
    if plugin.resource_field is not None and plugin.resource_field not in plugin.payload:
        raise PluginLoadError(
            FLOWS_GROUP, name, f"resource_field {plugin.resource_field!r} is not a payload field"
        )


def load_flow_classes(names: Iterable[str] = ()) -> dict[str, type[FlowFactory]]:
    """Import and check the flows registered in ``keramos.flows`` (only ``names`` if given)."""
    wanted = list(names)
    manager = sv_extension.ExtensionManager(
        FLOWS_GROUP, invoke_on_load=False, on_load_failure_callback=_raise_load_failure
    )
    found = {ext.name: ext.plugin for ext in manager}
    for name in wanted:
        if name not in found:
            raise PluginLoadError(
                FLOWS_GROUP,
                name,
                f"no such entry point is installed (installed: {', '.join(sorted(found))})",
            )
    selected = {name: found[name] for name in (wanted or sorted(found))}
    for name, plugin in selected.items():
        _check_flow(name, plugin)
    return selected


def load_flows(
    conf: cfg.ConfigOpts,
    drivers: Drivers,
    *,
    extra: Iterable[type[FlowFactory]] = (),
) -> dict[str, FlowFactory]:
    """Build the flow factories this worker serves (``[drivers] flows``, or all installed).

    ``extra`` flow classes are served too without being installed (tests and benchmarks).
    """
    classes = load_flow_classes(conf.drivers.flows)
    for plugin in extra:
        _check_flow(plugin.name, plugin)
        classes[plugin.name] = plugin
    factories: dict[str, FlowFactory] = {}
    for name, plugin in classes.items():
        try:
            factories[name] = plugin(drivers, conf)
        except Exception as error:
            raise PluginLoadError(
                FLOWS_GROUP, name, f"{plugin.__qualname__}(drivers, conf) failed: {error}"
            ) from error
    return factories


@dataclasses.dataclass(frozen=True)
class InstalledEntryPoint:
    """An entry point as ``keramos drivers`` lists it."""

    group: str
    name: str
    target: str
    distribution: str
    version: str


def installed_entry_points(groups: Iterable[str] = GROUPS) -> list[InstalledEntryPoint]:
    """Every installed entry point in ``groups``, with the distribution that provides it."""
    found: set[InstalledEntryPoint] = set()
    for group in groups:
        for ep in metadata.entry_points(group=group):
            dist = ep.dist
            found.add(
                InstalledEntryPoint(
                    group=group,
                    name=ep.name,
                    target=ep.value,
                    distribution=dist.metadata["Name"] if dist else "?",
                    version=dist.version if dist else "?",
                )
            )
    order = {group: index for index, group in enumerate(groups)}
    return sorted(found, key=lambda ep: (order[ep.group], ep.name, ep.distribution))
