"""``keramos run FLOW --store JSON``: run a flow in this process, no broker, no worker."""

from __future__ import annotations

import argparse
import sys

from keramos.framework import loader
from keramos.framework.cli.progress import ProgressPrinter, load_json_argument, print_json
from keramos.framework.errors import FlowFailed
from keramos.framework.runner import FlowRunner, new_request_id
from keramos.framework.service import persistence_backend


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a flow in this process (no broker), printing each task",
        description="Run FLOW in this process with the configured drivers and state store, "
        "exactly as a worker would run a cast of it, printing each task as it runs.",
    )
    parser.add_argument("flow", metavar="FLOW", help="flow (event) name, e.g. create_amphora")
    parser.add_argument(
        "--store",
        default="{}",
        metavar="JSON",
        help="the flow's payload as a JSON object, or @FILE to read it from a file",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the result")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    payload = load_json_argument(args.store, "--store")
    conf = args.conf()
    drivers = loader.load_drivers(conf)
    try:
        runner = FlowRunner(
            conf, drivers, loader.load_flows(conf, drivers), backend=persistence_backend(conf)
        )
        request_id = new_request_id()
        if not args.quiet:
            print(f"running {args.flow} ({request_id})")
        progress = None if args.quiet else ProgressPrinter()
        envelope = {"event": args.flow, "request_id": request_id, "payload": payload}
        try:
            result = runner.submit(envelope, on_progress=progress)
        except FlowFailed as failure:
            print(
                f"{args.flow} failed and was reverted: {failure.error_type}: "
                f"{failure.error_message}",
                file=sys.stderr,
            )
            return 1
        finally:
            runner.close()
        print_json(result)
        return 0
    finally:
        drivers.close()
