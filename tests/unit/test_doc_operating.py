"""doc/operating.md: every ``keramos`` command the page shows is one the CLI accepts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from keramos.framework.cli import build_parser

DOC = Path(__file__).resolve().parents[2] / "doc" / "operating.md"


def shown_commands(program: str) -> list[list[str]]:
    """The arguments of every ``program`` line in the page's ``sh`` blocks."""
    blocks = re.findall(r"^```sh\n(.*?)^```$", DOC.read_text(), flags=re.S | re.M)
    lines = [line for block in blocks for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith(f"{program} ")]


def test_every_keramos_command_on_the_page_parses():
    commands = shown_commands("keramos")
    assert len(commands) >= 5
    parser = build_parser()
    for argv in commands:
        args = parser.parse_args(argv)
        assert args.config_file == ["/etc/keramos/keramos.conf"], argv


def test_the_health_check_command_on_the_page_is_the_worker_option():
    assert shown_commands("keramos-worker") == [
        ["--config-file", "/etc/keramos/keramos.conf", "--check-health"]
    ]
