"""What every benchmark module shares: the row format and the table printer.

A benchmark module exposes ``rows(...) -> list[dict]``; each row compares Keramos with the raw
library underneath, measured in the same run: keys ``name``, ``keramos``, ``raw``, ``unit``,
``ratio`` (keramos / raw, or raw / keramos for costs) and ``goal``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any


class BenchUnavailable(RuntimeError):
    """A benchmark cannot run here (a baseline is not installed); the message says what to do."""


def row(name: str, keramos: float, raw: float, unit: str, goal: str) -> dict[str, Any]:
    """One table row; ``ratio`` is keramos / raw."""
    return {
        "name": name,
        "keramos": keramos,
        "raw": raw,
        "unit": unit,
        "ratio": keramos / raw if raw else float("nan"),
        "goal": goal,
    }


def rate(label: str, run_one: Callable[[], object], duration: float, minimum: int = 5) -> float:
    """Calls of ``run_one`` per second over ``duration`` seconds (at least ``minimum``), warm."""
    run_one()
    count = 0
    start = time.perf_counter()
    while count < minimum or time.perf_counter() - start < duration:
        run_one()
        count += 1
    per_second = count / (time.perf_counter() - start)
    print(f"  {label}: {count} in {time.perf_counter() - start:.1f}s, {per_second:.1f}/s",
          file=sys.stderr)
    return per_second


def format_table(table: list[dict]) -> str:
    """Return ``table`` as aligned text."""
    header = ["name", "keramos", "raw", "unit", "ratio", "goal"]
    lines = [header] + [
        [
            r["name"],
            f"{r['keramos']:.1f}",
            f"{r['raw']:.1f}",
            r["unit"],
            f"{r['ratio']:.2f}x",
            r["goal"],
        ]
        for r in table
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i in (0, 3, 5) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )
