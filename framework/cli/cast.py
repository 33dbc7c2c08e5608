"""``keramos cast EVENT --payload JSON [--wait]``: send a cast to the workers."""

from __future__ import annotations

import argparse
import sys

import oslo_messaging

from keramos.framework.cli.progress import load_json_argument, print_json
from keramos.framework.cli.watch import StepPrinter
from keramos.framework.client import KeramosClient
from keramos.framework.errors import FlowFailed


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cast",
        help="cast an event to the workers over the configured transport",
        description="Cast EVENT with a JSON payload to the worker topic and print its request "
        "id. With --wait, block until the flow ends; exit 1 if it failed.",
    )
    parser.add_argument("event", metavar="EVENT", help="event (flow) name, e.g. create_amphora")
    parser.add_argument(
        "--payload", default="{}", metavar="JSON", help="JSON object, or @FILE to read one"
    )
    parser.add_argument("--version", default="1.0", help="event version to ask for (default 1.0)")
    parser.add_argument(
        "--wait", action="store_true", help="wait for the flow's outcome, showing each task"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="with --wait, print only the outcome, not each task"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds --wait waits (default 300)"
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds to wait for the message broker to accept a connection before giving up "
        "(default 10)",
    )
    parser.set_defaults(func=cast)


def cast(args: argparse.Namespace) -> int:
    payload = load_json_argument(args.payload, "--payload")
    conf = args.conf()
    with KeramosClient(conf, broker_timeout=args.connect_timeout) as client:
        if args.wait:
            try:
                client.ping(timeout=5)
            except oslo_messaging.MessagingTimeout:
                print(
                    f"keramos cast: no worker answers on topic {conf.worker.topic} yet; the cast "
                    "waits in the queue until one starts",
                    file=sys.stderr,
                )
        request_id = client.cast(args.event, payload, version=args.version)
        print(request_id, flush=True)
        if not args.wait:
            return 0
        printer = None if args.quiet else StepPrinter()
        try:
            record = client.wait(request_id, timeout=args.timeout, on_step=printer)
        except FlowFailed as failure:
            print(
                f"{args.event} {request_id} failed: {failure.error_type}: {failure.error_message}",
                file=sys.stderr,
            )
            return 1
        finally:
            if printer is not None:
                printer.close()
        print_json(record)
        return 0
