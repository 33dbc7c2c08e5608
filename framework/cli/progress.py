"""Terminal output shared by commands: task progress lines and JSON documents."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from keramos.framework.observers import RunObserver

if TYPE_CHECKING:
    from keramos.framework.envelope import Job

_SHOWN_STATES = {
    "RUNNING": "running",
    "SUCCESS": "done",
    "FAILURE": "FAILED",
    "REVERTING": "reverting",
    "REVERTED": "reverted",
    "REVERT_FAILURE": "REVERT FAILED",
}


class ProgressPrinter(RunObserver):
    """An observer printing one line per task state change, with the time since its flow started.

    Made for one flow at a time (``keramos run``, the demo): each flow's start resets the clock.
    """

    def __init__(self, out: TextIO | None = None, *, prefix: str = "") -> None:
        self.out = out or sys.stdout
        self.prefix = prefix
        self._since = time.monotonic()
        self._task_started: dict[str, float] = {}

    def started(self, job: Job) -> None:
        """Count time from the start of ``job``'s flow."""
        self._since = time.monotonic()

    def task_state_changed(
        self, job: Job, task_name: str, state: str, details: Mapping[str, Any]
    ) -> None:
        """Print the change, with how long the task ran or reverted once it ends."""
        shown = _SHOWN_STATES.get(state)
        if shown is None:
            return
        now = time.monotonic()
        line = f"{self.prefix}[{now - self._since:7.3f}s] {task_name:<28} {shown}"
        if state in ("RUNNING", "REVERTING"):
            self._task_started[task_name] = now
        elif task_name in self._task_started:
            line += f" ({(now - self._task_started.pop(task_name)) * 1000:.1f} ms)"
        if state == "FAILURE":
            result = details.get("result")
            reason = getattr(result, "exception_str", None)
            if reason:
                line += f": {reason}"
        print(line, file=self.out, flush=True)


def aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """The rows as lines, each column as wide as its widest cell, two spaces between columns."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO | None = None) -> None:
    """Print rows under a header, each column as wide as its widest cell."""
    for line in aligned([header, *rows]):
        print(line, file=out or sys.stdout)


def shorten(text: str, width: int) -> str:
    """``text`` on one line, at most ``width`` characters: cut after its last whole word that
    fits (mid-word only for a word longer than the whole width), ``…`` marking the cut."""
    line = " ".join(text.split())
    if len(line) <= width:
        return line
    cut = line[: width - 1]
    if line[width - 1] != " " and " " in cut:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip() + "…"


def print_json(document: Any, out: TextIO | None = None) -> None:
    """Print a JSON document, indented, keys in order."""
    print(json.dumps(document, indent=2, sort_keys=True, default=str), file=out or sys.stdout)


def load_json_argument(value: str, what: str) -> Any:
    """Parse a JSON command-line value, or ``@PATH`` to read it from a file."""
    from keramos.framework.errors import KeramosError

    try:
        if value.startswith("@"):
            with open(value[1:], encoding="utf-8") as source:
                return json.load(source)
        return json.loads(value)
    except OSError as error:
        raise KeramosError(f"cannot read {what} from {value[1:]}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise KeramosError(f"{what} is not valid JSON: {error}") from None
