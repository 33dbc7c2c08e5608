"""Run every Keramos benchmark and print one table.

Each row compares Keramos with the raw library underneath, measured in the same run; ``ratio``
is Keramos over raw. ``python bench/run.py [--only NAME ...] [--quick]``; NAME is a module
suffix (``rpc``, ``runner``, ``persistence``, ...). Progress goes to stderr, the table to stdout.
A benchmark whose baseline cannot be installed here (``octavia``) says why on stderr; the others
still run and the exit status is 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import BenchUnavailable, format_table  # noqa: E402

#: module suffix -> (arguments for a full run, arguments for --quick)
BENCHMARKS: dict[str, tuple[dict, dict]] = {
    "rpc": ({"casts": 3000}, {"casts": 500}),
    "runner": ({"duration": 3.0}, {"duration": 1.0}),
    "persistence": ({"duration": 3.0}, {"duration": 1.0}),
    "certificates": ({"duration": 3.0}, {"duration": 1.0}),
    "images": ({}, {"size_mib": 64, "rss_size_mib": 256, "repeats": 1}),
    "agent": ({}, {"duration": 2.0, "agents": 5}),
    "proxy": ({}, {"duration": 2.0, "agents": 5}),
    "lifecycle": ({"creations": 300, "amphorae": 20}, {"creations": 50, "amphorae": 5}),
    "jobboard": ({"flows": 300, "backlog": 1000}, {"flows": 100, "backlog": 200}),
    "scaling": ({"creations": 300}, {"creations": 100, "rounds": 1}),
    "octavia": ({"creations": 200, "agents": 20}, {"creations": 50, "rounds": 1, "agents": 5, "duration": 2.0}),
    "observability": ({"duration": 6.0}, {"duration": 2.0}),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), metavar="NAME")
    parser.add_argument("--quick", action="store_true", help="smaller samples, noisier numbers")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    table = []
    unavailable = []
    for name in args.only or BENCHMARKS:
        full, quick = BENCHMARKS[name]
        module = importlib.import_module(f"bench_{name}")
        try:
            table += module.rows(**(quick if args.quick else full))
        except BenchUnavailable as error:
            unavailable.append(f"bench {name}: {error}")
    print(format_table(table))
    for line in unavailable:
        print(line, file=sys.stderr)
    return 2 if unavailable else 0


if __name__ == "__main__":
    sys.exit(main())
