"""What ``keramos cast --wait`` shows while a flow runs: each task as it starts, ends or reverts.

On a terminal, one status line rewritten in place (tasks done, the one running), with failures
and reverts kept as lines of their own; piped, one plain line per event, for logs and scripts.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

#: Events kept on a line of their own on a terminal (the rest only update the status line).
_KEPT = ("failed", "reverting", "reverted", "revert failed")

_CLEAR_LINE = "\r\033[K"


class StepPrinter:
    """``on_step`` callback of :meth:`KeramosClient.wait`, printing to ``out`` (stdout)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.terminal = self.out.isatty()
        self._since = time.monotonic()
        self._done = 0
        self._status_shown = False

    def __call__(self, task: str, event: str) -> None:
        """Show that ``task`` reached ``event``."""
        elapsed = time.monotonic() - self._since
        line = f"[{elapsed:7.3f}s] {task:<28} {event}"
        if not self.terminal:
            print(line, file=self.out, flush=True)
            return
        if event == "done":
            self._done += 1
        if event in _KEPT:
            self.out.write(f"{_CLEAR_LINE}{line}\n")
            self._status_shown = False
        else:
            doing = "running" if event == "started" else "finished"
            self.out.write(f"{_CLEAR_LINE}[{elapsed:6.1f}s] {self._done} task(s) done; {doing} {task}")
            self._status_shown = True
        self.out.flush()

    def close(self) -> None:
        """Leave the terminal on a fresh line with a summary of what ran."""
        if self.terminal and self._status_shown:
            elapsed = time.monotonic() - self._since
            self.out.write(f"{_CLEAR_LINE}[{elapsed:6.1f}s] {self._done} task(s) done\n")
            self.out.flush()
