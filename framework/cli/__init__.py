"""The ``keramos`` command: one module per subcommand group, each with ``register(subparsers)``.

A command module adds its parser(s) with ``subparsers.add_parser(...)`` and sets
``func=handler`` where ``handler(args) -> int`` is the exit status. ``args.conf(**overrides)``
builds the configuration from ``--config-file``/``--config-dir``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from oslo_config import cfg

from keramos.framework import __version__
from keramos.framework.errors import KeramosError
from keramos.framework.warnings_filter import silence_dependency_warnings

#: Command modules under keramos.framework.cli, in the order --help lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "demo", "run", "cast", "status", "drivers", "flows", "ca", "cert", "image", "amphora", "jobs",
    "db",
)


def _conf_factory(args: argparse.Namespace):
    def make(**overrides: Any):
        from keramos.framework.config import make_conf

        cli_args: list[str] = []
        for path in args.config_file or ():
            cli_args += ["--config-file", path]
        for path in args.config_dir or ():
            cli_args += ["--config-dir", path]
        return make_conf(
            cli_args, config_files=[] if cli_args else None, overrides=overrides or None
        )

    return make


def build_parser() -> argparse.ArgumentParser:
    """The whole ``keramos`` argument parser (also used to test ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="keramos",
        description="Keramos: run, cast and inspect taskflow flows served by Keramos workers.",
        epilog="Run 'keramos COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"keramos {__version__}")
    parser.add_argument(
        "--config-file",
        action="append",
        metavar="PATH",
        help="configuration file (repeatable; default: /etc/keramos/keramos.conf if present)",
    )
    parser.add_argument(
        "--config-dir", action="append", metavar="DIR", help="directory of *.conf files"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="show Keramos's log on stderr (-v: info, -vv: debug)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"keramos.framework.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``keramos`` console script."""
    silence_dependency_warnings()
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=(logging.CRITICAL, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    args.conf = _conf_factory(args)
    try:
        if args.config_file or args.config_dir:
            args.conf()
        return int(args.func(args) or 0)
    except cfg.Error as error:
        print(f"keramos {args.command}: configuration error: {error}", file=sys.stderr)
        return 2
    except KeramosError as error:
        print(f"keramos {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"keramos {args.command}: interrupted", file=sys.stderr)
        return 130
