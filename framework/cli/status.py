"""``keramos status REQUEST_ID``: ask a worker what became of a cast."""

from __future__ import annotations

import argparse
import sys

import oslo_messaging

from keramos.framework.cli.progress import print_json
from keramos.framework.client import KeramosClient


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show the state of a cast (pending, processing, success, failure)",
        description="Ask a worker (RPC call) for the task record of REQUEST_ID.",
    )
    parser.add_argument("request_id", metavar="REQUEST_ID", help="the request id a cast printed")
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the message broker and a worker to answer (default 10)",
    )
    parser.set_defaults(func=status)


def status(args: argparse.Namespace) -> int:
    with KeramosClient(args.conf(), broker_timeout=args.timeout) as client:
        try:
            record = client.status(args.request_id, timeout=args.timeout)
        except oslo_messaging.MessagingTimeout:
            print(f"keramos status: no worker answered within {args.timeout:g}s", file=sys.stderr)
            return 2
    if record is None:
        print(f"keramos status: no task {args.request_id}", file=sys.stderr)
        return 1
    print_json(record)
    return 0
