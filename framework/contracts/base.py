"""What every driver has in common."""

from __future__ import annotations

import abc
from typing import ClassVar

from oslo_config import cfg


class Driver(abc.ABC):
    """Base class of every Keramos driver.

    A driver is built once per worker process, at start-up, with the worker's configuration.
    It registers its own options in ``__init__`` (in a group of its own, e.g. ``[compute_process]``)
    and fails there, with :class:`keramos.framework.errors.ConfigError`, if they cannot work:
    a driver that starts is a driver that can serve.

    Drivers are shared by every flow the worker runs at once, from several threads: keep per-call
    state on the stack, not on ``self``, or guard it with a lock.
    """

    #: The entry-point group suffix this contract belongs to (``keramos.<kind>``).
    kind: ClassVar[str]

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        self.conf = conf

    def close(self) -> None:
        """Release connections, processes or files; called once when the worker stops."""
