"""``keramos flows list`` and ``keramos flows show NAME``: what each installed flow does.

``show`` draws the flow its factory builds with this configuration (so ``[amphora]
certificate_mode = csr`` shows the CSR tasks), on the configured drivers except the state store:
drawing reads and writes no record, so it uses the in-memory one and touches no database.
"""

from __future__ import annotations

import argparse
import os
import sys

from keramos.framework import flowgraph, loader
from keramos.framework.cli.progress import print_table
from keramos.framework.errors import KeramosError

#: The in-memory state store's entry point: drawing a flow keeps no records.
DRAWING_STATE_STORE = "noop"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "flows",
        help="list the installed flows, or draw one (text, Graphviz DOT or SVG)",
        description="List the flows registered under the keramos.flows entry-point group, or "
        "draw one from the flow object its factory builds: every task and retry controller "
        "with what it requires and provides, every subflow with its pattern.",
    )
    commands = parser.add_subparsers(dest="flows_command", metavar="SUBCOMMAND", required=True)
    listing = commands.add_parser(
        "list",
        help="name and one-line description of each installed flow",
        description="Print the name, version and the first line of the description of every "
        "flow registered under keramos.flows.",
    )
    listing.set_defaults(func=list_flows)
    show = commands.add_parser(
        "show",
        help="draw one flow",
        description="Draw FLOW as built by its factory with this configuration: an outline "
        "(text), a Graphviz digraph (dot) or an SVG picture laid out by Graphviz's dot program "
        "(svg; Debian package graphviz).",
    )
    show.add_argument("flow", metavar="FLOW", help="flow (event) name, e.g. create_amphora")
    show.add_argument(
        "--format",
        choices=flowgraph.FORMATS,
        default="text",
        help="text: an indented outline (default); dot: Graphviz source; svg: a picture",
    )
    show.add_argument(
        "--output",
        metavar="FILE",
        help="write the picture to FILE instead of standard output",
    )
    show.set_defaults(func=show_flow)


def _summary(factory: type) -> str:
    doc = (factory.__doc__ or "").strip()
    return " ".join(doc.split("\n\n", 1)[0].split())


def list_flows(args: argparse.Namespace) -> int:
    classes = loader.load_flow_classes()
    rows = [[name, str(cls.version), _summary(cls)] for name, cls in sorted(classes.items())]
    print_table(["NAME", "VERSION", "DESCRIPTION"], rows)
    return 0


def show_flow(args: argparse.Namespace) -> int:
    picture = draw(args.conf(), args.flow, args.format)
    if args.output is None:
        sys.stdout.write(picture)
        return 0
    try:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(picture)
    except OSError as error:
        raise KeramosError(f"cannot write {args.output}: {error.strerror}") from None
    print(f"wrote {os.path.abspath(args.output)}", file=sys.stderr)
    return 0


def draw(conf, flow_name: str, fmt: str) -> str:
    """The picture of ``flow_name`` as its factory builds it with ``conf``."""
    factory_class = loader.load_flow_classes([flow_name])[flow_name]
    state_store = loader.load_driver("state_store", DRAWING_STATE_STORE, conf)
    drivers = loader.load_drivers(conf, state_store=state_store)
    try:
        optional = [name for name, field in factory_class.payload.items() if not field.required]
        return flowgraph.render(factory_class(drivers, conf).build(), fmt, optional)
    finally:
        drivers.close()
