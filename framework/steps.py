"""The steps of a run: what each task did, as a cast's caller follows it (``keramos cast --wait``).

A step is ``{"task": NAME, "state": STATE}`` with a taskflow atom state (``PENDING``,
``RUNNING``, ``SUCCESS``, ``FAILURE``, ``REVERTING``, ``REVERTED``, ``REVERT_FAILURE``,
``IGNORE``, ...), plus ``"failed": true`` for the task whose execution failed. A run's steps are
listed in the order of its flow (depth first, as ``keramos flows show`` lists the atoms).

Where they come from, and why it works across processes and with the jobboard: while a flow
runs, from its flow detail in the persistence backend (every atom state change is saved there
anyway, by whichever worker runs it); once it ended (and its flow detail is gone), from the task
record, where the runner saves the final steps with the outcome. Any worker answers either from
the shared databases, so the caller needs neither the worker that runs the flow nor a
notification consumer of its own. A caller polls: it sees states, not every event, and
:class:`StepTracker` turns each new state into the events that must have led to it.

Imports nothing but the standard library: the client uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

#: What a caller is told about a task: ``started``, ``done``, ``failed``, ``reverting``,
#: ``reverted``, ``revert failed``.
STEP_EVENTS = ("started", "done", "failed", "reverting", "reverted", "revert failed")

_REVERT_EVENTS = ("reverting", "reverted", "revert failed")

#: ``callback(task_name, event)``: what :class:`StepTracker` reports.
StepCallback = Callable[[str, str], None]


def make_step(task: str, state: str, failed: bool) -> dict[str, Any]:
    """One step, as records keep it."""
    step: dict[str, Any] = {"task": task, "state": state}
    if failed:
        step["failed"] = True
    return step


def steps_in_order(
    order: Sequence[str], states: Mapping[str, str], failed: Iterable[str]
) -> list[dict[str, Any]]:
    """The steps of the atoms ``order`` names (flow order) that ``states`` has; what else a flow
    detail keeps (taskflow's own injector of the flow's inputs) is not a task."""
    failed = set(failed)
    return [make_step(name, states[name], name in failed) for name in order if name in states]


def events_leading_to(state: str, failed: bool) -> tuple[str, ...]:
    """The events a task went through to be in ``state`` (``failed``: its execution failed)."""
    ran = ("started", "failed" if failed else "done")
    return {
        "RUNNING": ("started",),
        "SUCCESS": ran,
        "FAILURE": ("started", "failed"),
        "REVERTING": (*ran, "reverting"),
        "REVERTED": (*ran, "reverting", "reverted"),
        "REVERT_FAILURE": (*ran, "reverting", "revert failed"),
    }.get(state, ())


class StepTracker:
    """Turns successive step lists of one run into events, each reported once, in order.

    Of what happened between two looks, forward events are reported in flow order and revert
    events in reverse flow order (a flow reverts from its last task back): exact for linear
    flows, one order the flow allows for the others. A task run again (under a retry
    controller) is reported again from its start.
    """

    def __init__(self, callback: StepCallback) -> None:
        self.callback = callback
        self._reported: dict[str, tuple[str, ...]] = {}

    def update(self, steps: Sequence[Mapping[str, Any]] | None) -> None:
        """Report what ``steps`` (a run's steps, flow order) show that was not reported yet."""
        forward: list[tuple[str, str]] = []
        reverts: list[list[tuple[str, str]]] = []
        for step in steps or ():
            name = step["task"]
            reached = events_leading_to(step["state"], bool(step.get("failed")))
            reported = self._reported.get(name, ())
            if reached[: len(reported)] != reported:
                reported = ()
            if len(reached) <= len(reported):
                continue
            self._reported[name] = reached
            new = [(name, event) for event in reached[len(reported):]]
            forward += [pair for pair in new if pair[1] not in _REVERT_EVENTS]
            reverts.append([pair for pair in new if pair[1] in _REVERT_EVENTS])
        for name, event in forward + [pair for task in reversed(reverts) for pair in task]:
            self.callback(name, event)
