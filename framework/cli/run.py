"""``keramos run FLOW --payload JSON``: run a flow in this process, no broker, no worker.

The payload option has the name ``keramos cast`` gives it. ``--store`` (its first name, after
taskflow's store) is still accepted, hidden from the help, with a one-line notice on stderr, so
that scripts written against it keep working while they are updated.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from oslo_config import cfg

from keramos.framework import loader
from keramos.framework.cli.progress import ProgressPrinter, load_json_argument, print_json
from keramos.framework.contracts import Driver
from keramos.framework.envelope import new_request_id
from keramos.framework.errors import FlowFailed
from keramos.framework.runner import FlowRunner
from keramos.framework.service import persistence_backend


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a flow in this process (no broker), printing each task",
        description="Run FLOW in this process with the configured drivers and state store, "
        "exactly as a worker would run a cast of it, printing each task as it runs.",
    )
    parser.add_argument("flow", metavar="FLOW", help="flow (event) name, e.g. create_amphora")
    payload = parser.add_mutually_exclusive_group()
    payload.add_argument(
        "--payload",
        metavar="JSON",
        help="the flow's payload as a JSON object, or @FILE to read it from a file (default {})",
    )
    payload.add_argument("--store", metavar="JSON", help=argparse.SUPPRESS)
    parser.add_argument("--quiet", action="store_true", help="print only the result")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.store is not None:
        print("keramos run: --store is deprecated, use --payload", file=sys.stderr)
        payload = load_json_argument(args.store, "--store")
    else:
        payload = load_json_argument(args.payload or "{}", "--payload")
    result = run_here(args.conf(), args.flow, payload, quiet=args.quiet)
    if result is None:
        return 1
    print_json(result)
    return 0


def run_here(
    conf: cfg.ConfigOpts,
    flow: str,
    payload: Any,
    *,
    quiet: bool = False,
    **drivers: Driver,
) -> dict[str, Any] | None:
    """Run ``flow`` in this process as a worker would; ``None`` (and a message) if it failed.

    ``drivers`` are used as they are instead of those ``[drivers]`` names (as commands that
    build their own, e.g. a CA unlocked with a passphrase from the command line).
    """
    loaded = loader.load_drivers(conf, **drivers)
    try:
        runner = FlowRunner(
            conf, loaded, loader.load_flows(conf, loaded), backend=persistence_backend(conf)
        )
        request_id = new_request_id()
        if not quiet:
            print(f"running {flow} ({request_id})")
        envelope = {"event": flow, "request_id": request_id, "payload": payload}
        try:
            return runner.submit(envelope, observers=[] if quiet else [ProgressPrinter()])
        except FlowFailed as failure:
            print(
                f"{flow} failed and was reverted: {failure.error_type}: {failure.error_message}",
                file=sys.stderr,
            )
            return None
        finally:
            runner.close()
    finally:
        loaded.close()
