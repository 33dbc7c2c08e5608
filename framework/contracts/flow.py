"""Contract for flows (``keramos.flows``): what a third party implements to ship a flow.

A flow factory names an event, declares the payload that event carries, and builds a taskflow
flow from the drivers the worker loaded. The worker validates every cast against ``payload``
before anything runs, so tasks can trust their inputs.

Example::

    class Hello(FlowFactory):
        name = "hello"
        payload = {"who": Field(str)}
        result_keys = ("greeting",)

        def build(self):
            return linear_flow.Flow(self.name).add(Greet(provides="greeting"))
"""

from __future__ import annotations

import abc
import dataclasses
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, ClassVar

from oslo_config import cfg
from taskflow import flow as tf_flow

from keramos.framework.schema import Field

if TYPE_CHECKING:
    from keramos.framework.contracts.drivers import Drivers


#: What a periodic task casts with: ``cast(event, payload, request_id=None) -> request_id``.
Cast = Callable[..., str]


@dataclasses.dataclass(frozen=True)
class PeriodicTask:
    """Work a flow asks the worker to do every ``interval`` seconds (in one process per worker).

    ``run(cast)`` looks for work and casts events for it, so that any worker runs the flows.
    """

    name: str
    interval: float
    run: Callable[[Cast], None]


class FlowFactory(abc.ABC):
    """Builds the taskflow flow that runs for one event.

    Class attributes:

    ``name``
        The event name; must equal the entry point's name in ``keramos.flows``.
    ``version``
        ``"MAJOR.MINOR"``. A cast asking for the same major and a minor up to this one is served;
        anything else is refused as incompatible. Add optional payload fields in a minor,
        anything else in a major.
    ``payload``
        Field name to :class:`~keramos.framework.schema.Field`. Unknown fields are refused.
        The validated payload, plus ``request_id``, is the flow's initial store.
    ``resource_field``
        The payload field naming the resource the flow acts on (reported with every event).
    ``result_keys``
        The names, among what the flow's tasks provide, returned to the caller as the result.
    ``reusable``
        ``True`` when one flow from ``build`` may be run by many engines, at once and one after
        the other: its tasks keep no state of their own (what a run needs comes from its
        arguments, its drivers and the configuration read at build time) and never call
        ``update_progress`` (progress would reach every engine running the task). The runner
        then builds the flow once, on first use, and saves rebuilding every task for every run.
        ``False`` by default.

    The factory is built once per worker with the drivers and the configuration; ``build`` must
    return a fresh flow whose tasks receive the drivers they need as constructor arguments (never
    loading drivers themselves). The runner asks :meth:`flow` for the flow of each run.
    """

    name: ClassVar[str]
    version: ClassVar[str] = "1.0"
    payload: ClassVar[Mapping[str, Field]] = {}
    resource_field: ClassVar[str | None] = None
    result_keys: ClassVar[tuple[str, ...]] = ()
    reusable: ClassVar[bool] = False

    def __init__(self, drivers: Drivers, conf: cfg.ConfigOpts) -> None:
        self.drivers = drivers
        self.conf = conf
        self._built: tf_flow.Flow | None = None
        self._build_lock = threading.Lock()

    @abc.abstractmethod
    def build(self) -> tf_flow.Flow:
        """Return a new taskflow flow for one run."""

    def flow(self) -> tf_flow.Flow:
        """The flow for one run: :meth:`build`'s, built once if the factory is ``reusable``."""
        if not self.reusable:
            return self.build()
        with self._build_lock:
            if self._built is None:
                self._built = self.build()
            return self._built

    def periodic_tasks(self) -> list[PeriodicTask]:
        """Periodic work this flow needs (none by default), e.g. casting due rotations."""
        return []
