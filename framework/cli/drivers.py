"""``keramos drivers``: what is installed in every Keramos entry-point group."""

from __future__ import annotations

import argparse
import dataclasses

from keramos.framework import loader
from keramos.framework.cli.progress import aligned, print_json
from keramos.framework.errors import PluginLoadError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "drivers",
        help="list installed drivers and flows, and the packages providing them",
        description="List every entry point in the keramos.* groups with the distribution that "
        "provides it. --check also imports each one and checks it against its contract.",
    )
    parser.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="table: one line per entry point under its group (default); json: a list of "
        "objects with group, name, target, distribution, version (and check)",
    )
    parser.add_argument(
        "--check", action="store_true", help="import each plugin and check its contract"
    )
    parser.set_defaults(func=drivers)


def _check(entry: loader.InstalledEntryPoint) -> str:
    try:
        if entry.group == loader.FLOWS_GROUP:
            loader.load_flow_classes([entry.name])
        else:
            loader.load_driver_class(entry.group.split(".", 1)[1], entry.name)
    except PluginLoadError as error:
        return f"error: {error.cause}"
    return "ok"


def drivers(args: argparse.Namespace) -> int:
    entries = loader.installed_entry_points()
    checks = {entry: _check(entry) for entry in entries} if args.check else {}
    if args.format == "json":
        documents = []
        for entry in entries:
            document = dataclasses.asdict(entry)
            if args.check:
                document["check"] = checks[entry]
            documents.append(document)
        print_json(documents)
    else:
        rows = [
            (entry.name, entry.target, entry.distribution, entry.version)
            + ((f"[{checks[entry]}]",) if args.check else ())
            for entry in entries
        ]
        lines = dict(zip(entries, aligned(rows), strict=True))
        for group in loader.GROUPS:
            print(group)
            members = [entry for entry in entries if entry.group == group]
            if not members:
                print("  (none installed)")
            for entry in members:
                print(f"  {lines[entry]}")
    return 1 if any(result != "ok" for result in checks.values()) else 0
