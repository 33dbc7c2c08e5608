"""The taskflow engines Keramos runs its flows on: taskflow's own, with a cheaper storage lock.

Taskflow's engine guards its storage (the flow's state in memory) with a reader/writer lock from
fasteners, taken on every read of an atom's state while the scheduler walks the flow's graph:
thousands of times per flow. Each take of that lock goes through a condition variable and
bookkeeping of who reads; together they cost more CPU than the tasks of a no-op flow.

Readers never overlap usefully here: a serial engine reads and writes its storage from one
thread, and a parallel engine's storage is written by the engine's thread and by its tasks'
progress reports, each for a moment. One re-entrant lock held by whoever reads or writes is
therefore as safe as the reader/writer lock (it excludes strictly more) and costs a fraction.

The engines are taskflow's ``SerialActionEngine`` and ``ParallelActionEngine`` (what
``taskflow.engines.load`` returns for ``engine="serial"`` and ``"parallel"``), built directly by
:func:`load` (no plugin lookup per run); only their storage's lock differs, and a flow built once
(a ``reusable`` flow factory's) is compiled once: :class:`CompiledFlow` keeps taskflow's
``PatternCompiler`` of the flow, which compiles it on first use into a frozen, immutable
``Compilation`` and hands that same compilation to every later engine (each engine still builds
its own runtime and storage from it). The storage finds its
lock under ``_lock``, the attribute fasteners' ``read_locked``/``write_locked`` decorators read
by default; the engine's builder takes it through the storage's public ``lock``. Every run of a
flow (resumes and jobboard claims included) goes through here, so a flow behaves the same as on
taskflow's stock engines: same states, same saves, same notifications.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from taskflow.engines.action_engine import compiler as tf_compiler
from taskflow.engines.action_engine import engine as tf_engine
from taskflow.persistence import base as tf_persistence
from taskflow.persistence import models
from taskflow.utils import misc

__all__ = ["CompiledFlow", "ExclusiveLock", "load"]


class ExclusiveLock:
    """One re-entrant lock standing for both sides of a reader/writer lock.

    Offers what taskflow takes of fasteners' ``ReaderWriterLock``: ``read_lock()`` and
    ``write_lock()``, each a context manager. A thread that holds it may take it again, as
    taskflow's storage does when one locked method calls another.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def read_lock(self) -> Any:
        """The lock, to hold while reading."""
        return self._lock

    def write_lock(self) -> Any:
        """The lock, to hold while writing."""
        return self._lock


def _with_exclusive_lock(storage: Any) -> Any:
    if not hasattr(storage, "_lock"):
        raise TypeError("taskflow's Storage keeps no _lock: keramos.framework.engines needs updating")
    storage._lock = ExclusiveLock()
    return storage


class CompiledFlow:
    """A flow and its compiler, for a flow that many engines run (one after another or at once).

    Taskflow's compiler compiles its flow once, under its own lock, and keeps the result: a
    ``Compilation`` whose graphs are frozen. Engines given the same :class:`CompiledFlow` share
    that compilation instead of walking the flow again.
    """

    __slots__ = ("compiler", "flow")

    def __init__(self, flow: Any) -> None:
        self.flow = flow
        self.compiler = tf_compiler.PatternCompiler(flow)


class _CompilerSharing:
    """Makes an engine use the compiler of a :class:`CompiledFlow` (its own otherwise).

    Taskflow's action engine makes a ``PatternCompiler`` of its flow as it is built and keeps it
    under ``_compiler``; nothing else reads it until the engine compiles. Handing it the shared
    compiler instead is the one place Keramos relies on that name: ``test_engines`` fails if the
    engines stop sharing their compilation.
    """

    def __init__(
        self, flow: Any, flow_detail: Any, backend: Any, options: Any, compiled: CompiledFlow | None = None
    ) -> None:
        super().__init__(flow, flow_detail, backend, options)
        if compiled is not None:
            if compiled.flow is not flow:
                raise ValueError("the compiled flow is not the flow this engine runs")
            self._compiler = compiled.compiler


class SerialEngine(_CompilerSharing, tf_engine.SerialActionEngine):
    """Taskflow's serial engine, its storage guarded by an :class:`ExclusiveLock`."""

    @misc.cachedproperty
    def storage(self) -> Any:
        """Taskflow's storage for this engine, with an :class:`ExclusiveLock` (made once, before
        anything reads it)."""
        return _with_exclusive_lock(super().storage)


class ParallelEngine(_CompilerSharing, tf_engine.ParallelActionEngine):
    """Taskflow's parallel engine, its storage guarded by an :class:`ExclusiveLock`."""

    @misc.cachedproperty
    def storage(self) -> Any:
        """Taskflow's storage for this engine, with an :class:`ExclusiveLock` (made once, before
        anything reads it)."""
        return _with_exclusive_lock(super().storage)


#: ``[worker] engine`` -> engine class.
ENGINES: dict[str, type[tf_engine.ActionEngine]] = {"serial": SerialEngine, "parallel": ParallelEngine}


def load(
    flow: Any,
    flow_detail: models.FlowDetail,
    backend: tf_persistence.Backend,
    *,
    kind: str,
    store: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    compiled: CompiledFlow | None = None,
) -> tf_engine.ActionEngine:
    """An engine of ``kind`` (``serial`` or ``parallel``) for ``flow`` on a saved ``flow_detail``,
    with ``store`` injected: what ``taskflow.engines.load`` gives for a flow detail it is handed.
    ``compiled`` (of this very ``flow``) shares its compilation with the other engines given it.

    :raises ValueError: ``kind`` is not an engine Keramos runs.
    """
    try:
        engine_class = ENGINES[kind]
    except KeyError:
        raise ValueError(f"unknown engine {kind!r} (known: {', '.join(sorted(ENGINES))})") from None
    engine = engine_class(flow, flow_detail, backend, dict(options or {}), compiled)
    if store:
        engine.storage.inject(store)
    return engine
